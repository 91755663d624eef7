"""Sending Celery tasks by name, so a service never imports the task module that imports it back.

Tasks import their service inside the body; services send work to tasks by the name on the
``@shared_task(name=...)`` decorator. Routing (``CELERY_TASK_ROUTES``) applies by that name, as
for ``.delay()``. ``send_on_commit`` is the usual form: a message for a row that was never
committed would find nothing, or the old state.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction


def send(name: str, *args: Any) -> None:
    """Queue task ``name`` with positional ``args`` now."""
    from config.celery_app import app

    app.send_task(name, args=args)


def send_on_commit(name: str, *args: Any) -> None:
    """Queue task ``name`` once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: send(name, *args))
