"""Sending Celery tasks by name, so a service never imports the task module that imports it back.

Tasks import their service inside the body; services send work to tasks by the name on the
``@shared_task(name=...)`` decorator. Routing (``CELERY_TASK_ROUTES``) applies by that name, as
for ``.delay()``. ``send_on_commit`` is the usual form: the message is written to the outbox
(``config.outbox``) in the current transaction and sent once it commits, so a change and its
message commit together; a broker that is down then delays the message (the beat sweep sends
it) instead of failing a write that already happened.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from config.outbox.delivery import deliver, publish
from config.outbox.models import OutboxMessage


def send(name: str, *args: Any, countdown: float | None = None) -> None:
    """Queue task ``name`` with positional ``args`` now (raises when the broker is unreachable)."""
    publish(name, list(args), countdown=countdown)


def send_on_commit(name: str, *args: Any) -> None:
    """Queue task ``name`` with the current transaction: recorded now, sent once it commits."""
    message = OutboxMessage.objects.create(task=name, args=list(args))
    transaction.on_commit(lambda: deliver(message.pk))
