"""What the long, attempt-tracked Celery jobs share (a conversion, an image build).

Each job works on one row, named by ``(row_id, attempt)`` in its arguments. It survives a lost
worker (acks late, redelivered) and retries on database hiccups; when the retries run out or
the time limit hits, the row fails with a reason a user can read instead of hanging.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from django.db import InterfaceError, OperationalError

RETRYING_JOB = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "max_retries": 5,
}
"""Options of ``shared_task`` for such a job."""


class RowJobTask(Task):
    """Base of a job on one row: subclasses name the job and say how the row fails."""

    job = "job"

    def fail_row(self, row_id: int, attempt: str | None, reason: str) -> None:
        raise NotImplementedError

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        row_id, attempt = ([*list(args), None, None])[:2]
        if row_id is not None:
            self.fail_row(int(row_id), attempt, f"{self.job} failed: {type(exc).__name__}: {exc}"[:2000])
