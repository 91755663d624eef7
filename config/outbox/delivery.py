"""Sending the outbox's messages: at once after commit, and by the beat sweep for those that failed."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from config.outbox.models import OutboxMessage

logger = logging.getLogger(__name__)

SWEEP_BATCH = 500
FRESH_S = 2.0
"""The sweep leaves messages this young to their own after-commit send."""


def publish(name: str, args: list[Any], *, countdown: float | None = None) -> None:
    """Hand one message to the broker, to run after ``countdown`` seconds (raises when it cannot)."""
    from config.celery_app import app

    app.send_task(name, args=args, countdown=countdown)


def deliver(message_id: int) -> bool:
    """Send one recorded message and delete it; a broker that is down leaves it for the sweep."""
    message = OutboxMessage.objects.filter(pk=message_id).first()
    if message is None:
        return True  # the sweep sent it already
    return _send(message)


def _send(message: OutboxMessage) -> bool:
    try:
        publish(message.task, list(message.args))
    except Exception as exc:  # kombu's and redis' errors alike: the broker is unreachable now
        OutboxMessage.objects.filter(pk=message.pk).update(
            attempts=message.attempts + 1, last_error=str(exc)[:2000]
        )
        if message.attempts == 0:
            logger.warning("task %s queued in the outbox, the broker is unreachable: %s", message.task, exc)
        return False
    OutboxMessage.objects.filter(pk=message.pk).delete()
    return True


def deliver_pending() -> dict[str, int]:
    """Send every message older than ``FRESH_S``, oldest first; stops at the first broker failure."""
    counts = {"sent": 0, "pending": 0}
    cutoff = timezone.now() - timedelta(seconds=FRESH_S)
    with transaction.atomic():
        batch = list(
            OutboxMessage.objects.select_for_update(skip_locked=True).filter(created_at__lte=cutoff)[
                :SWEEP_BATCH
            ]
        )
        for message in batch:
            if not _send(message):
                break
            counts["sent"] += 1
    counts["pending"] = OutboxMessage.objects.count()
    return counts
