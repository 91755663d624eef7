"""Worker identity (report tokens) and report ingestion."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from deployments import histograms
from deployments.errors import InvalidDeploymentError, WorkerAuthError
from deployments.models import Report, Worker, WorkerState


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
    """The worker row of an orchestrator's task (its id as handle) whose service token this is."""
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


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidDeploymentError(f"{field}: must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidDeploymentError(f"{field}: {value!r} is not an ISO 8601 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _histogram(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    le, counts = raw.get("le"), raw.get("counts")
    if not isinstance(le, list) or not isinstance(counts, list) or len(le) != len(counts) or len(le) > 64:
        return {}
    if not all(isinstance(c, int) and c >= 0 for c in counts):
        return {}
    return {"le": [str(x) for x in le], "counts": counts}


ERROR_OUTCOMES_EXCLUDED = {"success"}


def ingest_report(*, worker: Worker, payload: dict[str, Any]) -> Report:
    """Store one report and mark the worker alive. The payload schema is ``kiln.worker-report/v1``."""
    if payload.get("schema") != "kiln.worker-report/v1":
        raise InvalidDeploymentError("schema: expected 'kiln.worker-report/v1'")
    interval = payload.get("interval")
    window = payload.get("window")
    if not isinstance(interval, dict) or not isinstance(window, dict):
        raise InvalidDeploymentError("interval and window: required objects")
    start, end = _time(interval.get("start"), "interval.start"), _time(interval.get("end"), "interval.end")
    now = timezone.now()
    if end < start or end > now + timedelta(minutes=5):
        raise InvalidDeploymentError("interval: end must follow start and not lie in the future")
    latency = _object(window.get("latency_ms"))
    outcomes = {
        str(k)[:40]: int(v)
        for k, v in list(_object(window.get("outcomes")).items())[:32]
        if isinstance(v, int) and v >= 0
    }
    process = _object(payload.get("process"))
    devices = [d for d in payload.get("devices") or [] if isinstance(d, dict)][:16]
    requests = window.get("requests")
    report = Report.objects.create(
        worker=worker,
        variant=worker.variant,
        deployment=worker.variant.deployment,
        version_number=worker.version.version,
        start=start,
        end=end,
        seconds=max((end - start).total_seconds(), 0.001),
        requests=requests if isinstance(requests, int) and requests >= 0 else 0,
        errors=sum(v for k, v in outcomes.items() if k not in ERROR_OUTCOMES_EXCLUDED),
        outcomes=outcomes,
        latency_histogram=_histogram(window.get("latency_histogram")),
        batch_histogram=_histogram(window.get("batch_size_histogram")),
        latency_p50_ms=_num(latency.get("p50")),
        latency_p95_ms=_num(latency.get("p95")),
        latency_p99_ms=_num(latency.get("p99")),
        mean_batch_size=_num(window.get("mean_batch_size")),
        queue_depth=_num(payload.get("queue_depth")) or 0.0,
        in_flight=_num(payload.get("in_flight")) or 0.0,
        cpu_percent=_num(process.get("cpu_percent")),
        rss_bytes=int(_num(process.get("rss_bytes")) or 0) or None,
        gpu_utilization=_num(devices[0].get("utilization_ratio")) if devices else None,
        gpu_memory_bytes=int(_num(devices[0].get("memory_used_bytes")) or 0) if devices else None,
    )
    summary = {
        k: payload.get(k) for k in ("state", "sequence", "queue_depth", "in_flight", "counters", "devices")
    }
    listen = _object(payload.get("listen"))
    summary["listen"] = {  # where a worker on port 0 listens (a swarm task's address comes from it)
        k: v
        for k, v in listen.items()
        if k in ("http_port", "grpc_port") and isinstance(v, int) and -1 <= v <= 65535
    }
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat=now, last_report=summary)
    if payload.get("state") == "ready" and worker.state == WorkerState.UNHEALTHY:
        Worker.objects.filter(pk=worker.pk, state=WorkerState.UNHEALTHY).update(
            state=WorkerState.READY, state_changed_at=now
        )
    return report


def downsample_reports() -> dict[str, int]:
    """Fold raw reports older than the raw retention into per-minute rows; drop rows past retention."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.KILN_REPORT_RAW_RETENTION_S)
    folded = 0
    old = Report.objects.filter(resolution=Report.Resolution.RAW, end__lt=cutoff).order_by("end")
    groups: dict[tuple[int | None, int, datetime], list[Report]] = {}
    for report in old.iterator(chunk_size=2000):
        minute = report.end.replace(second=0, microsecond=0)
        groups.setdefault((report.worker_id, report.variant_id, minute), []).append(report)
    for (_worker_id, _variant_id, minute), reports in groups.items():
        with transaction.atomic():
            Report.objects.create(**_fold(reports, minute))
            Report.objects.filter(pk__in=[r.pk for r in reports]).delete()
        folded += len(reports)
    expired = Report.objects.filter(
        end__lt=now - timedelta(days=settings.KILN_REPORT_RETENTION_DAYS)
    ).delete()[0]
    return {"folded": folded, "expired": expired}


def _fold(reports: list[Report], minute: datetime) -> dict[str, Any]:
    first = reports[0]
    requests = sum(r.requests for r in reports)
    outcomes: dict[str, int] = {}
    for r in reports:
        for key, value in r.outcomes.items():
            outcomes[key] = outcomes.get(key, 0) + int(value)

    def weighted(field: str) -> float | None:
        pairs = [(getattr(r, field), r.requests) for r in reports if getattr(r, field) is not None]
        total = sum(w for _, w in pairs)
        if not pairs:
            return None
        result = sum(v * w for v, w in pairs) / total if total else sum(v for v, _ in pairs) / len(pairs)
        return float(result)

    def mean(field: str) -> float | None:
        values = [getattr(r, field) for r in reports if getattr(r, field) is not None]
        return sum(values) / len(values) if values else None

    latency = histograms.merge(r.latency_histogram for r in reports)

    def percentile(q: float, field: str) -> float | None:
        """From the merged buckets; reports without a histogram fall back to the weighted mean."""
        if histograms.total(latency):
            return histograms.quantile(latency, q)
        return weighted(field)

    rss = [r.rss_bytes for r in reports if r.rss_bytes is not None]
    gpu_mem = [r.gpu_memory_bytes for r in reports if r.gpu_memory_bytes is not None]
    return {
        "worker_id": first.worker_id,
        "variant_id": first.variant_id,
        "deployment_id": first.deployment_id,
        "version_number": first.version_number,
        "resolution": Report.Resolution.MINUTE,
        "start": min(r.start for r in reports),
        "end": minute + timedelta(minutes=1),
        "seconds": sum(r.seconds for r in reports),
        "requests": requests,
        "errors": sum(r.errors for r in reports),
        "outcomes": outcomes,
        "latency_histogram": latency,
        "batch_histogram": histograms.merge(r.batch_histogram for r in reports),
        **{
            f"latency_{name}_ms": percentile(q, f"latency_{name}_ms")
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
        "mean_batch_size": weighted("mean_batch_size"),
        "queue_depth": mean("queue_depth") or 0.0,
        "in_flight": mean("in_flight") or 0.0,
        "cpu_percent": mean("cpu_percent"),
        "rss_bytes": max(rss) if rss else None,
        "gpu_utilization": mean("gpu_utilization"),
        "gpu_memory_bytes": max(gpu_mem) if gpu_mem else None,
        "samples": sum(r.samples for r in reports),
    }


def bump_restarts(worker: Worker) -> None:
    Worker.objects.filter(pk=worker.pk).update(restarts=F("restarts") + 1)
