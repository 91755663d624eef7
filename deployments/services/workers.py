"""Worker identity (report tokens) and report ingestion."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from config.errors import about_field
from deployments import histograms
from deployments.errors import InvalidDeploymentError, WorkerAuthError
from deployments.models import Report, Worker, WorkerState
from deployments.services.events import enqueue_reconcile
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.report import (
    READY,
    WorkerReport,
    encode_report,
    failed_requests,
    parse_report,
)


def new_worker_token() -> tuple[str, str]:
    """A fresh report token and its digest (only the digest is stored)."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def authenticate_worker(*, worker_id: int, token: str) -> Worker:
    """The worker whose token this is; a missing, wrong or other worker's token is refused."""
    worker = Worker.objects.select_related("variant__deployment").filter(pk=worker_id).first()
    digest = hashlib.sha256(token.encode()).hexdigest()
    if worker is None or not worker.token_digest or not hmac.compare_digest(worker.token_digest, digest):
        raise WorkerAuthError("invalid worker token for this worker")
    return worker


def authenticate_task(*, handle: str, token: str) -> Worker:
    """The worker row of an orchestrator's task (its id as handle) whose service token this is.

    Every task of a service shares the service's token (one launch spec for all), so a task could
    speak for a sibling of the same variant, never for another variant's."""
    worker = (
        Worker.objects.select_related("variant__deployment")
        .filter(handle=handle)
        .exclude(handle="")
        .order_by("-id")
        .first()
    )
    digest = hashlib.sha256(token.encode()).hexdigest()
    if worker is None or not worker.token_digest or not hmac.compare_digest(worker.token_digest, digest):
        raise WorkerAuthError("invalid worker token for this task (or a task the platform has not seen yet)")
    return worker


def last_report_of(worker: Worker) -> WorkerReport | None:
    """The worker's last report as the contract reads it (None before the first, or if unreadable)."""
    if not worker.last_report:
        return None
    try:
        return parse_report(worker.last_report)
    except ContractError:
        return None


def ingest_report(*, worker: Worker, payload: dict[str, Any]) -> Report:
    """Store one report and mark the worker alive. The payload is a ``contracts.report`` report."""
    try:
        report = parse_report(payload)
    except ContractError as exc:
        raise InvalidDeploymentError(str(exc), extra=about_field(exc.field, str(exc))) from None
    start, end = report.interval.start, report.interval.end
    now = timezone.now()
    if end < start or end > now + timedelta(minutes=5):
        raise InvalidDeploymentError("interval: end must follow start and not lie in the future")
    window, process = report.window, report.process
    device = report.devices[0] if report.devices else None
    row = Report.objects.create(
        worker=worker,
        variant=worker.variant,
        deployment=worker.variant.deployment,
        version_number=worker.version.version,
        start=start,
        end=end,
        seconds=max((end - start).total_seconds(), 0.001),
        requests=window.requests,
        errors=failed_requests(window.outcomes),
        outcomes=dict(window.outcomes),
        latency_histogram=histograms.stored(window.latency_histogram),
        batch_histogram=histograms.stored(window.batch_size_histogram),
        latency_p50_ms=window.latency_ms.p50,
        latency_p95_ms=window.latency_ms.p95,
        latency_p99_ms=window.latency_ms.p99,
        mean_batch_size=window.mean_batch_size,
        queue_depth=report.queue_depth,
        in_flight=report.in_flight,
        cpu_percent=process.cpu_percent,
        rss_bytes=process.rss_bytes or None,
        gpu_utilization=device.utilization_ratio if device else None,
        gpu_memory_bytes=(device.memory_used_bytes or 0) if device else None,
    )
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat=now, last_report=encode_report(report))
    if report.state == READY and worker.state == WorkerState.STARTING:
        # Its first report: probe and route it now, not at the next scheduled pass (a cold start waits on it).
        enqueue_reconcile(worker.variant.deployment)
    if report.state == READY and worker.state == WorkerState.UNHEALTHY:
        Worker.objects.filter(pk=worker.pk, state=WorkerState.UNHEALTHY).update(
            state=WorkerState.READY, state_changed_at=now
        )
    return row


def bump_restarts(worker: Worker) -> None:
    Worker.objects.filter(pk=worker.pk).update(restarts=F("restarts") + 1)
