"""The beat job that sends what the outbox still holds."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="outbox.deliver", acks_late=True, soft_time_limit=50, time_limit=60)
def deliver_outbox_task() -> dict[str, int]:
    from config.outbox.delivery import deliver_pending

    return deliver_pending()
