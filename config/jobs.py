"""What the long, attempt-tracked jobs share (a conversion, an image build): the row's state machine
and the Celery task base.

Each job works on one row, named by ``(row_id, attempt)`` in its arguments. The row is the truth
and the Celery message only a trigger::

    queued --claim--> running --complete--> done
      |                 |  ^
      |                 |  +--claim again, same attempt, once the heartbeat went silent (resume)
      +-----------------+--fail--> failed       (the job, its failure hook, or the sweep)

A claim is one conditional UPDATE that succeeds for exactly one caller, so a redelivered
message resumes while a duplicate does nothing. Only the attempt that owns a running row
may beat, complete it or (when given) fail it. A beat job sweeps rows whose worker went silent
(resumed until the tries run out), rows running past their deadline, and queued rows whose
message was lost. The job survives a lost worker (acks late, redelivered) and retries on
database hiccups; when the retries run out or the time limit hits, ``RowJobTask.on_failure``
fails the row with a reason a user can read instead of leaving it hanging.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar

from celery import Task
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import InterfaceError, OperationalError, models
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.locks import advisory_lock

RETRYING_JOB = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "max_retries": 5,
}
"""Options of ``shared_task`` for such a job."""

Row = TypeVar("Row", bound=models.Model)
StaleCause = Literal["timeout", "interrupted"]
"""Why the sweep fails a row: it ran past its deadline, or its worker died once too often."""


class JobRow(models.Model):
    """The fields every job row has beside its own status: who owns it, how often it ran, when."""

    attempt = models.UUIDField(null=True, blank=True)
    tries = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


@dataclass(frozen=True)
class RowJob(Generic[Row]):
    """The state machine of one kind of job, on the rows of ``model``.

    The four statuses are the model's own values; the ``*_field`` names say which of its fields
    hold the attempt, the try count and the clock (checked when the job is defined, so a typo
    fails at import). The limits are read through callables at each use, so a changed setting
    applies at once. Statuses and field names are all the job knows of the model: what a row
    does while it runs (progress, logs, the artifact) stays with the caller, passed through
    ``**fields``.
    """

    model: type[Row]
    queued: str
    running: str
    done: str
    failed: str
    lease_s: Callable[[], float]
    """A running row whose heartbeat is older than this lost its worker."""
    deadline_s: Callable[[], float]
    """A running row started longer ago than this is failed, whatever its heartbeat says."""
    max_tries: Callable[[], int]
    status_field: str = "status"
    attempt_field: str = "attempt"
    tries_field: str = "tries"
    heartbeat_field: str = "heartbeat_at"
    started_field: str = "started_at"
    finished_field: str = "finished_at"
    queued_since_field: str = "created_at"
    """A queued row older than two leases by this field lost its message and is sent again."""

    def __post_init__(self) -> None:
        for name in (
            self.status_field,
            self.attempt_field,
            self.tries_field,
            self.heartbeat_field,
            self.started_field,
            self.finished_field,
            self.queued_since_field,
        ):
            try:
                self.model._meta.get_field(name)
            except FieldDoesNotExist as exc:
                msg = f"{self.model.__name__} has no field {name!r} for its row job"
                raise ImproperlyConfigured(msg) from exc

    # -- the running attempt ---------------------------------------------------------------------
    def claim(self, row_id: int, attempt: str, **fields: Any) -> bool:
        """Take the row for ``attempt``: a queued row, or a running one of the same attempt whose
        heartbeat went silent (its worker died). Counts a try and starts the clock on the first.

        True for exactly one caller; False for a duplicate, another attempt, a finished row or one
        out of tries. ``fields`` are written in the same UPDATE.
        """
        now = timezone.now()
        silent = now - timedelta(seconds=self.lease_s())
        updated = (
            self._rows(row_id, attempt)
            .filter(**{f"{self.tries_field}__lt": self.max_tries()})
            .filter(
                Q(**{self.status_field: self.queued})
                | Q(**{self.status_field: self.running, f"{self.heartbeat_field}__lt": silent})
            )
            .update(
                **{
                    self.status_field: self.running,
                    self.tries_field: F(self.tries_field) + 1,
                    self.heartbeat_field: now,
                    self.started_field: Coalesce(F(self.started_field), now),
                },
                **fields,
            )
        )
        return updated == 1

    def owned(self, row_id: int, attempt: str) -> models.QuerySet[Row]:
        """The row while ``attempt`` runs it (empty once it finished, failed or was superseded)."""
        return self._rows(row_id, attempt).filter(**{self.status_field: self.running})

    def heartbeat(self, row_id: int, attempt: str, **fields: Any) -> bool:
        """Tell the sweep the attempt is alive, writing ``fields`` (progress, log) with it."""
        return self.owned(row_id, attempt).update(**{self.heartbeat_field: timezone.now()}, **fields) == 1

    def complete(self, row_id: int, attempt: str, **fields: Any) -> bool:
        """Mark the row done, when ``attempt`` still owns it (False: it was failed or superseded)."""
        done = {self.status_field: self.done, self.finished_field: timezone.now()}
        return self.owned(row_id, attempt).update(**done, **fields) == 1

    # -- ending it from anywhere -----------------------------------------------------------------
    def failable(self, row_id: int, attempt: str | None) -> models.QuerySet[Row]:
        """The row while it can still fail: queued or running, of ``attempt`` (None: any attempt)."""
        rows = self.model._default_manager.filter(
            pk=row_id, **{f"{self.status_field}__in": (self.queued, self.running)}
        )
        return rows if attempt is None else rows.filter(**{self.attempt_field: attempt})

    def fail(self, row_id: int, attempt: str | None, **fields: Any) -> bool:
        """Mark the row failed, with ``fields`` (the reason); False when it had ended already.

        ``attempt`` None fails whichever attempt holds it (the sweep, a person); a stale attempt's
        failure hook never touches a newer attempt.
        """
        failed = {self.status_field: self.failed, self.finished_field: timezone.now()}
        return self.failable(row_id, attempt).update(**failed, **fields) == 1

    def restart(self, row: Row) -> uuid.UUID:
        """Set ``row`` (unsaved) queued as a new attempt with no try and no clock; returns the attempt.

        The caller resets its own fields, saves, and enqueues the new attempt after the commit; a
        job still running the old attempt can no longer beat, complete or fail the row.
        """
        attempt = uuid.uuid4()
        for name, value in (
            (self.status_field, self.queued),
            (self.attempt_field, attempt),
            (self.tries_field, 0),
            (self.started_field, None),
            (self.heartbeat_field, None),
        ):
            setattr(row, name, value)
        return attempt

    # -- the beat job ----------------------------------------------------------------------------
    def sweep(
        self,
        *,
        lock: str,
        send: Callable[[Row], None],
        fail: Callable[[Row, StaleCause], bool],
    ) -> dict[str, int]:
        """Fail rows past their deadline or out of tries, resume silent ones, re-send lost messages.

        ``send(row)`` enqueues the row's current attempt again; ``fail(row, cause)`` fails it with
        the job's own wording and says whether it did. A PostgreSQL advisory lock named ``lock``
        keeps overlapping beats from both acting (the second returns zeros).
        """
        counts = {"resumed": 0, "requeued": 0, "failed": 0}
        with advisory_lock(lock) as taken:
            if not taken:
                return counts
            now = timezone.now()
            lease = timedelta(seconds=self.lease_s())
            running = self.model._default_manager.filter(**{self.status_field: self.running})
            past_deadline = now - timedelta(seconds=self.deadline_s())
            for row in running.filter(**{f"{self.started_field}__lt": past_deadline}):
                counts["failed"] += fail(row, "timeout")
            for row in running.filter(**{f"{self.heartbeat_field}__lt": now - lease}):
                if getattr(row, self.tries_field) >= self.max_tries():
                    counts["failed"] += fail(row, "interrupted")
                else:
                    send(row)
                    counts["resumed"] += 1
            lost = self.model._default_manager.filter(
                **{
                    self.status_field: self.queued,
                    f"{self.queued_since_field}__lt": now - 2 * lease,
                    f"{self.attempt_field}__isnull": False,
                }
            )
            for row in lost:
                send(row)
                counts["requeued"] += 1
        return counts

    def _rows(self, row_id: int, attempt: str) -> models.QuerySet[Row]:
        return self.model._default_manager.filter(pk=row_id, **{self.attempt_field: attempt})


class RowJobTask(Task):
    """Base of a job on one row: subclasses name the job and say how the row fails."""

    job = "job"

    def fail_row(self, row_id: int, attempt: str | None, reason: str) -> None:
        raise NotImplementedError

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        row_id, attempt = ([*list(args), None, None])[:2]
        if row_id is not None:
            self.fail_row(int(row_id), attempt, f"{self.job} failed: {type(exc).__name__}: {exc}"[:2000])
