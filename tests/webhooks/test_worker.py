"""A real Celery worker sends a committed change's webhook, retries a 500 and sends a success once."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.webhooks.models import WebhookDelivery
from tests.support.polling import wait_for
from tests.support.services import CeleryWorker
from tests.support.versions import ready_version
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def webhook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's settings (read from its environment): the local receiver allowed, a short backoff."""
    monkeypatch.setenv("KILN_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("KILN_WEBHOOK_BACKOFF_S", "0.5")


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("webhook_env")
def test_the_worker_delivers_after_commit_retries_a_500_and_sends_a_success_once(
    receiver: WebhookReceiver, celery_worker: CeleryWorker, owner: User, owner_api: APIClient
) -> None:
    receiver.statuses = [500]
    ready_version(owner)
    created = owner_api.post(
        "/api/v1/webhooks/",
        {"url": receiver.url, "event_types": ["alias.moved"], "model": "cnn", "secret": "0123456789abcdef"},
        format="json",
    )
    assert created.status_code == 201, created.content

    moved = owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json")
    assert moved.status_code == 200, moved.content

    delivery = wait_for(
        lambda: WebhookDelivery.objects.filter(status="delivered").first(), timeout=60, message="the delivery"
    )
    assert (delivery.attempts, delivery.last_status_code) == (2, 200)
    assert [r.headers["X-Kiln-Event"] for r in receiver.received] == ["alias.moved", "alias.moved"]
    time.sleep(1.5)  # a late duplicate would have arrived by now (three backoff bases)
    assert len(receiver.received) == 2
