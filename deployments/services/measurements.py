"""Serving advice confirmed by measurement, as Triton's Model Analyzer does: the job and its rows.

``request_measurement`` queues a ``MeasurementRun``; a Celery job (``deployments.measure_version``)
claims it (``MEASURE_JOB``, the shared row-job state machine of ``config.jobs``), then for each
batching the platform's one rule can propose at the run's budget (``candidate_batchings``; the
largest also with more instances) starts the real worker on this machine and loads it
(``deployments.measure_worker``). The rows are written with the run's completion, in one
transaction: one row per (configuration, protocol, concurrency) and version, a new run replacing
the cells it measured again. A failure marks the run failed with a readable reason; the beat
sweep resumes runs whose job went silent and fails those out of time or tries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from config import dispatch
from config.errors import ConflictError
from config.jobs import RowJob, StaleCause
from deployments.errors import MeasurementBusyError, MeasurementError
from deployments.loadgen import LOAD_PROTOCOLS
from deployments.measure_models import (
    ACTIVE_MEASUREMENT_STATES,
    Measurement,
    MeasurementRun,
    MeasurementStatus,
)
from deployments.measure_worker import Load, Measured, measure_configuration, started_worker
from deployments.reconcile.spec import version_worker_spec
from deployments.services.batching import candidate_batchings
from inference_worker.contracts.batching import BatchingConfig, encode_batching
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.warmup import REPORT_KEY, WarmupInputs, parse_warmup
from inference_worker.host import cpu_model
from registry.audit import Actor
from registry.models import ModelVersion, VersionStatus

logger = logging.getLogger(__name__)
MAX_TRIES = 2

MEASURE_JOB = RowJob(
    model=MeasurementRun,
    queued=MeasurementStatus.QUEUED,
    running=MeasurementStatus.RUNNING,
    done=MeasurementStatus.DONE,
    failed=MeasurementStatus.FAILED,
    lease_s=lambda: 60.0 + 2 * float(settings.KILN_ADVICE_MEASURE_SECONDS),  # a beat every cell at least
    deadline_s=lambda: float(settings.KILN_ADVICE_MEASURE_TIMEOUT_S) + 60,
    max_tries=lambda: MAX_TRIES,
)


def config_key(batching: BatchingConfig) -> str:
    """The batching options as one comparable key (a measured row and the advice's choice meet on it)."""
    canonical = json.dumps(encode_batching(batching), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def measured_configurations(report: dict[str, object], *, latency_budget_ms: float) -> list[BatchingConfig]:
    """What a run measures: each batching the rule can propose at this budget, with one instance, and
    the largest with every other instance count of ``KILN_ADVICE_MEASURE_INSTANCES``."""
    candidates = candidate_batchings(report, latency_budget_ms=latency_budget_ms)
    extra = [replace(candidates[-1], instances=n) for n in settings.KILN_ADVICE_MEASURE_INSTANCES if n != 1]
    return [replace(c, instances=1) for c in candidates] + extra


def _load() -> Load:
    seconds = float(settings.KILN_ADVICE_MEASURE_SECONDS)
    return Load(
        protocols=LOAD_PROTOCOLS,
        concurrencies=tuple(settings.KILN_ADVICE_MEASURE_CLIENTS),
        seconds=seconds,
        warmup_s=min(1.0, seconds / 2),  # fresh connections and the first batches are not counted
    )


def _enqueue(run: MeasurementRun) -> None:
    dispatch.send_on_commit("deployments.measure_version", run.pk, str(run.attempt))


@transaction.atomic
def request_measurement(*, version: ModelVersion, latency_budget_ms: float, actor: Actor) -> MeasurementRun:
    """Queue a measurement of a ready version (409 while one is queued or running)."""
    if version.status != VersionStatus.READY or not version.onnx_path:
        raise ConflictError(
            f"{version} is {version.status}: only a ready (converted) version can be measured",
            code="version_not_ready",
        )
    busy = MeasurementRun.objects.filter(version=version, status__in=ACTIVE_MEASUREMENT_STATES).first()
    if busy is not None:
        raise MeasurementBusyError(f"{version} is being measured already", extra={"run": busy.pk})
    try:
        with transaction.atomic():
            run = MeasurementRun.objects.create(
                version=version,
                latency_budget_ms=latency_budget_ms,
                requested_by=actor if isinstance(actor, User) else None,
                attempt=uuid.uuid4(),
                step="waiting for a measurement worker",
            )
    except IntegrityError:  # another request won the race for the version
        raise MeasurementBusyError(f"{version} is being measured already") from None
    _enqueue(run)
    return run


def measure_after_conversion(*, version: ModelVersion) -> None:
    """The registry's ``version_ready`` hook: measure a freshly converted version when configured."""
    if not settings.KILN_ADVICE_MEASURE_AFTER_CONVERSION:
        return
    try:
        request_measurement(version=version, latency_budget_ms=settings.KILN_LATENCY_BUDGET_MS, actor=None)
    except ConflictError as exc:
        logger.info("no measurement after converting %s: %s", version, exc.message)


# -- the job ---------------------------------------------------------------------------------------
def measure_version(*, run_id: int, attempt: str) -> MeasurementRun | None:
    """Claim and run one measurement; None when another job owns it (or it ended)."""
    if not MEASURE_JOB.claim(run_id, attempt, step="starting", error="", machine=machine()):
        logger.info("measurement %s attempt %s: nothing to do", run_id, attempt)
        return None
    run = MeasurementRun.objects.select_related("version__model").get(pk=run_id)
    try:
        rows = _run(run, attempt)
    except MeasurementError as exc:
        fail_measurement(run_id=run_id, attempt=attempt, reason=exc.message)
    else:
        _complete(run, attempt, rows)
    return MeasurementRun.objects.get(pk=run_id)


class _Progress:
    """The run's step and progress on its row, which also tell the sweep the job is alive."""

    def __init__(self, run_id: int, attempt: str, total: int) -> None:
        self.run_id, self.attempt, self.total, self.done = run_id, attempt, max(total, 1), 0
        self.title = ""

    def beat(self, step: str) -> None:
        progress = min(99, 100 * self.done // self.total)
        MEASURE_JOB.heartbeat(
            self.run_id, self.attempt, step=f"{self.title}: {step}"[:200], progress=progress
        )

    def worker(self, handle: str) -> None:
        MEASURE_JOB.heartbeat(self.run_id, self.attempt, worker_handle=handle)


def _run(run: MeasurementRun, attempt: str) -> list[Measurement]:
    version = run.version
    configurations = measured_configurations(version.report or {}, latency_budget_ms=run.latency_budget_ms)
    load, warmup = _load(), _warmup(version)
    progress = _Progress(run.pk, attempt, len(configurations) * load.cells)
    rows: list[Measurement] = []
    for batching in configurations:
        progress.title = f"batch {batching.max_batch_size}, {batching.instances} instance(s)"
        spec = version_worker_spec(
            version=version,
            deployment=version.model.name,
            variant="measurement",
            batching=batching,
            worker_id=0,
            report_url="",
            token="",
        )
        progress.beat("starting the worker")
        with started_worker(
            spec,
            log_name=f"measure-{run.pk}",
            start_timeout_s=settings.KILN_WORKER_START_TIMEOUT_S,
            on_start=progress.worker,
            beat=progress.beat,
        ) as worker:
            for measured in measure_configuration(worker, load, warmup, progress.beat):
                rows.append(_row(run, batching, measured))
                progress.done += 1
    return rows


def _row(run: MeasurementRun, batching: BatchingConfig, measured: Measured) -> Measurement:
    cell = measured.cell
    return Measurement(
        version_id=run.version_id,
        run=run,
        config_key=config_key(batching),
        batching=encode_batching(batching),
        max_batch_size=batching.max_batch_size,
        instances=batching.instances,
        protocol=measured.protocol,
        concurrency=cell.concurrency,
        seconds=cell.seconds,
        requests=cell.requests,
        errors=cell.errors,
        worker_requests=max(0, measured.worker_requests),
        throughput_rps=round(cell.throughput_rps, 1),
        p50_ms=None if cell.p50_ms is None else round(cell.p50_ms, 3),
        p99_ms=None if cell.p99_ms is None else round(cell.p99_ms, 3),
        measured_at=timezone.now(),
    )


@transaction.atomic
def _complete(run: MeasurementRun, attempt: str, rows: list[Measurement]) -> None:
    """Done and its rows, together; nothing written when the attempt no longer owns the run."""
    configurations = len({row.config_key for row in rows})
    step = f"measured {configurations} configuration(s), {len(rows)} cells"
    if not MEASURE_JOB.complete(run.pk, attempt, progress=100, step=step, worker_handle=""):
        logger.warning("measurement %s finished but its attempt was superseded", run.pk)
        return
    Measurement.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["version", "config_key", "protocol", "concurrency"],
        update_fields=[
            "run", "batching", "max_batch_size", "instances", "seconds", "requests", "errors",
            "worker_requests", "throughput_rps", "p50_ms", "p99_ms", "measured_at",
        ],
    )  # fmt: skip
    logger.info("measurement %s of %s: %s", run.pk, run.version, step)


def fail_measurement(*, run_id: int, attempt: str | None, reason: str) -> bool:
    """Mark a run failed with a readable reason (``attempt`` None: whichever attempt holds it)."""
    failed = MEASURE_JOB.fail(run_id, attempt, error=reason[:4000], step="failed", worker_handle="")
    if failed:
        logger.warning("measurement %s failed: %s", run_id, reason)
    return failed


def sweep_measurements() -> dict[str, int]:
    """Resume runs whose job went silent, re-send lost triggers, fail runs out of tries or time."""
    return MEASURE_JOB.sweep(lock="deployments.sweep_measurements", send=_enqueue_now, fail=_fail_stale)


def _enqueue_now(run: MeasurementRun) -> None:
    dispatch.send("deployments.measure_version", run.pk, str(run.attempt))


def _fail_stale(run: MeasurementRun, cause: StaleCause) -> bool:
    if cause == "timeout":
        limit = settings.KILN_ADVICE_MEASURE_TIMEOUT_S
        reason = f"the measurement did not finish within {limit:.0f} s ({run.step})"
    else:
        reason = (
            f"the measurement was interrupted {run.tries} times (its worker stopped); last step: {run.step}"
        )
    return fail_measurement(run_id=run.pk, attempt=None, reason=reason)


def _warmup(version: ModelVersion) -> WarmupInputs | None:
    recorded = (version.report or {}).get(REPORT_KEY)
    try:
        return None if recorded is None else parse_warmup(recorded)
    except ContractError:
        return None


def machine() -> str:
    """Where a measurement runs, as the advice quotes it: host, CPU model and cores."""
    return f"{socket.gethostname()}, {cpu_model()}, {os.cpu_count() or 1} cores"[:200]


# -- reads -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasuredCell:
    """A measured row as the serving advice reads it."""

    config_key: str
    batching: dict[str, object]
    max_batch_size: int
    instances: int
    protocol: str
    concurrency: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    measured_at: datetime
    machine: str


def measured_cells(version: ModelVersion) -> list[MeasuredCell]:
    """Every cell measured for ``version``, newest figures only (one row per cell)."""
    rows = Measurement.objects.filter(version=version).select_related("run")
    return [
        MeasuredCell(
            config_key=r.config_key,
            batching=r.batching,
            max_batch_size=r.max_batch_size,
            instances=r.instances,
            protocol=r.protocol,
            concurrency=r.concurrency,
            throughput_rps=r.throughput_rps,
            p50_ms=r.p50_ms,
            p99_ms=r.p99_ms,
            errors=r.errors,
            measured_at=r.measured_at,
            machine=r.run.machine,
        )
        for r in rows
    ]


def latest_run(version: ModelVersion) -> MeasurementRun | None:
    return MeasurementRun.objects.filter(version=version).order_by("-created_at", "-id").first()
