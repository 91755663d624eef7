"""Celery tasks of webhooks: thin wrappers that take ids and call one function."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError


@shared_task(
    name="webhooks.deliver",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=90,
    time_limit=120,
)
def deliver_webhook_task(delivery_id: int) -> str:
    from deployments.webhooks.delivery import deliver

    return deliver(delivery_id)


@shared_task(name="webhooks.send_due", acks_late=True, soft_time_limit=50, time_limit=60)
def send_due_webhooks_task() -> int:
    from deployments.webhooks.delivery import send_due

    return send_due()
