"""The database side of ONNX conversion: claim, run in the sandbox, store, record.

The row is the truth and the Celery message only a trigger: ``CONVERSION_JOB`` is the
shared row-job state machine (``config.jobs.RowJob``) on a version's ``conversion_*``
fields. A job claims a fresh ``registered`` row, or a ``converting`` row of the same
attempt whose heartbeat went silent (its worker died), so a redelivered message resumes
while a duplicate does nothing. The beat sweep re-enqueues silent jobs and fails rows
that ran out of tries or time.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config import dispatch
from config.jobs import RowJob, StaleCause
from config.metrics.events import record_conversion
from registry import hooks, storage
from registry.audit import Actor, record_event
from registry.errors import VersionStateError
from registry.models import ModelVersion, VersionStatus
from registry.sandbox import SandboxError, run_child

logger = logging.getLogger(__name__)

CONVERSION_JOB = RowJob(
    model=ModelVersion,
    queued=VersionStatus.REGISTERED,
    running=VersionStatus.CONVERTING,
    done=VersionStatus.READY,
    failed=VersionStatus.FAILED,
    lease_s=lambda: float(settings.KILN_CONVERT_LEASE_S),
    deadline_s=lambda: float(settings.KILN_CONVERT_STALE_AFTER_S),
    max_tries=lambda: int(settings.KILN_CONVERT_MAX_TRIES),
    attempt_field="conversion_attempt",
    tries_field="conversion_tries",
    heartbeat_field="conversion_heartbeat_at",
    started_field="conversion_started_at",
    finished_field="conversion_finished_at",
    queued_since_field="updated_at",
)


PARITY_TOLERANCE_MAX = 1.0
"""The largest atol or rtol a version may ask its parity check for."""


class ParityTolerance(NamedTuple):
    """A version's own parity tolerance; None keeps the platform's (``KILN_PARITY_ATOL``/``_RTOL``)."""

    atol: float | None = None
    rtol: float | None = None

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> ParityTolerance:
        """From validated ``parity_atol`` and ``parity_rtol`` fields (an upload's, a convert request's)."""
        return cls(fields.get("parity_atol"), fields.get("parity_rtol"))


PLATFORM_TOLERANCE = ParityTolerance()
"""No tolerance of the version's own."""


def _enqueue(version_id: int, attempt: uuid.UUID) -> None:
    dispatch.send_on_commit("registry.convert_version", version_id, str(attempt))


@transaction.atomic
def request_conversion(
    *, version: ModelVersion, actor: Actor, tolerance: ParityTolerance = PLATFORM_TOLERANCE
) -> ModelVersion:
    """Convert ``version`` again (after a failure, or to refresh its report); a ``tolerance``
    value given replaces the version's own."""
    locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if locked.status == VersionStatus.CONVERTING:
        raise VersionStateError(f"{locked} is converting already")
    before = {"status": locked.status, "reason": locked.status_reason, **_tolerance_of(locked)}
    attempt = CONVERSION_JOB.restart(locked)
    locked.status_reason = ""
    locked.progress = "queued"
    if tolerance.atol is not None:
        locked.parity_atol = tolerance.atol
    if tolerance.rtol is not None:
        locked.parity_rtol = tolerance.rtol
    locked.save()
    record_event(
        actor=actor,
        action="version.conversion_requested",
        subject=f"model/{locked.model.name}/v{locked.version}",
        model=locked.model,
        before=before,
        after={"status": locked.status, **_tolerance_of(locked)},
    )
    _enqueue(locked.pk, attempt)
    return locked


def _tolerance_of(version: ModelVersion) -> dict[str, float | None]:
    return {"parity_atol": version.parity_atol, "parity_rtol": version.parity_rtol}


def start_first_conversion(version: ModelVersion) -> None:
    """Give a just-registered version its attempt id and enqueue it after the commit."""
    version.conversion_attempt = uuid.uuid4()
    version.progress = "queued"
    version.save(update_fields=["conversion_attempt", "progress"])
    _enqueue(version.pk, version.conversion_attempt)


def _claim(version_id: int, attempt: str) -> ModelVersion | None:
    with transaction.atomic():
        if not CONVERSION_JOB.claim(version_id, attempt, progress="starting", status_reason=""):
            return None
        version = ModelVersion.objects.select_related("model").get(pk=version_id)
        record_event(
            actor=None,
            action="version.status_changed",
            subject=f"model/{version.model.name}/v{version.version}",
            model=version.model,
            before={"status": "registered" if version.conversion_tries == 1 else "converting"},
            after={"status": "converting", "try": version.conversion_tries},
        )
    return version


class _Beat:
    """Throttled progress and heartbeat writes for one running attempt (driven by the child's pump)."""

    def __init__(self, version: ModelVersion, attempt: str) -> None:
        self.version_id = version.pk
        self.attempt = attempt
        self.last = 0.0

    def progress(self, text: str) -> None:
        CONVERSION_JOB.heartbeat(self.version_id, self.attempt, progress=text[:200])
        self.last = time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self.last >= min(5.0, settings.KILN_CONVERT_LEASE_S / 3):
            CONVERSION_JOB.heartbeat(self.version_id, self.attempt)
            self.last = time.monotonic()


def convert_version(*, version_id: int, attempt: str) -> ModelVersion | None:
    """Claim and convert one version; returns it, or None when another job owns it."""
    version = _claim(version_id, attempt)
    if version is None:
        logger.info("conversion of version %s attempt %s: nothing to do", version_id, attempt)
        return None
    beat = _Beat(version, attempt)
    with storage.new_temp_file(suffix=".onnx") as output:
        try:
            result = run_child(
                "convert",
                _conversion_request(version, str(output)),
                timeout_s=settings.KILN_CONVERT_TIMEOUT_S,
                memory_mb=settings.KILN_CONVERT_MEMORY_MB,
                on_progress=beat.progress,
                heartbeat=beat.tick,
            )
        except SandboxError as exc:
            report = exc.extra.get("report") if isinstance(exc.extra.get("report"), dict) else None
            return fail_version(
                version_id=version.pk, attempt=attempt, reason=exc.message, report=report, code=exc.code
            )
        relative, digest, size, _created = storage.store_path(output)
        ready = _mark_ready(version, attempt, result, relative, digest, size)
        # A deletion of the last other version with this ONNX may have removed the file meanwhile.
        storage.ensure_stored(relative, output, digest)
    return ready


def _conversion_request(version: ModelVersion, output: str) -> dict[str, Any]:
    return {
        "format": version.source_format,
        "source_path": str(storage.resolve(version.source_path)),
        "output_path": output,
        "signature": version.signature,
        "atol": settings.KILN_PARITY_ATOL if version.parity_atol is None else version.parity_atol,
        "rtol": settings.KILN_PARITY_RTOL if version.parity_rtol is None else version.parity_rtol,
        "parity_batch_sizes": [1, 3, 8],
        "profile_max_batch": settings.KILN_PROFILE_MAX_BATCH,
        "profile_runs": 10,
        "threads": 2,
        "opset": None,
        "seed": version.pk,
    }


@transaction.atomic
def _mark_ready(
    version: ModelVersion, attempt: str, result: dict[str, Any], relative: str, digest: str, size: int
) -> ModelVersion | None:
    updated = CONVERSION_JOB.complete(
        version.pk,
        attempt,
        status_reason="",
        progress="done",
        onnx_path=relative,
        onnx_sha256=digest,
        onnx_size=size,
        report=result.get("report", {}),
        signature=result.get("signature") or version.signature,
    )
    if not updated:
        logger.warning("conversion of %s finished but the attempt was superseded", version)
        return None
    version.refresh_from_db()
    _count_outcome(version, outcome="ready")
    record_event(
        actor=None,
        action="version.status_changed",
        subject=f"model/{version.model.name}/v{version.version}",
        model=version.model,
        before={"status": "converting"},
        after={"status": "ready", "onnx_sha256": digest, "parity": version.report.get("parity")},
    )
    hooks.version_ready.call(version=version)
    return version


@transaction.atomic
def fail_version(
    *,
    version_id: int,
    attempt: str | None,
    reason: str,
    report: dict[str, Any] | None = None,
    code: str = "failed",
) -> ModelVersion | None:
    """Mark a registered or converting version failed with a reason a user can act on.

    ``code`` is the short machine code of the cause (``export_failed``, ``timeout``...),
    counted in ``kiln_conversion_failures_total{reason}``.
    """
    version = CONVERSION_JOB.failable(version_id, attempt).select_for_update().select_related("model").first()
    if version is None:
        return None
    before = {"status": version.status}
    fields: dict[str, Any] = {
        "status_reason": reason[:4000],
        "progress": "failed",
        "updated_at": timezone.now(),
    }
    if report is not None:
        fields["report"] = report
    CONVERSION_JOB.fail(version.pk, attempt, **fields)  # the row is locked: this attempt still holds it
    version.refresh_from_db()
    _count_outcome(version, outcome="failed", code=code)
    record_event(
        actor=None,
        action="version.status_changed",
        subject=f"model/{version.model.name}/v{version.version}",
        model=version.model,
        before=before,
        after={"status": "failed"},
        reason=version.status_reason,
    )
    logger.info("conversion of %s failed: %s", version, reason)
    return version


def _count_outcome(version: ModelVersion, *, outcome: str, code: str = "") -> None:
    """Prometheus: the outcome and duration of a conversion, counted once the row is committed."""
    started, finished = version.conversion_started_at, version.conversion_finished_at
    duration = (finished - started).total_seconds() if started and finished and finished >= started else None
    transaction.on_commit(lambda: record_conversion(outcome=outcome, duration_s=duration, reason=code))


def sweep_stale_conversions() -> dict[str, int]:
    """Resume conversions whose worker went silent; fail those out of tries or time.

    Runs from beat; a PostgreSQL advisory lock keeps overlapping beats from both acting.
    """
    return CONVERSION_JOB.sweep(lock="registry.sweep_stale_conversions", send=_enqueue_now, fail=_fail_stale)


def _fail_stale(version: ModelVersion, cause: StaleCause) -> bool:
    if cause == "timeout":
        limit = settings.KILN_CONVERT_STALE_AFTER_S
        reason = f"conversion did not finish within {limit:.0f} s (last stage: {version.progress})"
    else:
        reason = (
            f"conversion was interrupted {version.conversion_tries} times (its worker stopped); "
            f"last stage: {version.progress}"
        )
    return fail_version(version_id=version.pk, attempt=None, reason=reason, code=cause) is not None


def _enqueue_now(version: ModelVersion) -> None:
    """Send the version's current attempt again, at once (the sweep runs outside a transaction)."""
    if version.conversion_attempt is None:
        return
    dispatch.send("registry.convert_version", version.pk, str(version.conversion_attempt))
