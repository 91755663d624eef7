"""Numbers for the dashboard and the deployment and version pages, computed from worker reports.

Rates are requests over wall time; percentiles come from merged latency histograms
(never averaged percentiles); every figure carries its unit in its key.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Case, Count, Prefetch, When
from django.utils import timezone

from deployments import histograms, series_sql
from deployments.models import Deployment, Report, Rollout, Variant, Worker, WorkerState
from deployments.services.gateway_stats import read_snapshots, shadow_summary, variant_stats
from inference_worker.contracts.report import SUCCESS, failed_requests


@dataclass(frozen=True)
class Range:
    """A chart range: how far back, the bucket width, the rollup tier it reads, how often to refresh."""

    name: str
    seconds: int
    step_s: int
    resolution: str
    refresh_s: int


RANGES = {
    "15m": Range("15m", 15 * 60, 15, Report.Resolution.RAW, 5),
    "1h": Range("1h", 3600, 60, Report.Resolution.MINUTE, 15),
    "24h": Range("24h", 24 * 3600, 600, Report.Resolution.TEN_MINUTES, 60),
    "7d": Range("7d", 7 * 24 * 3600, 3600, Report.Resolution.HOUR, 300),
}


def summarize(reports: list[Report], seconds: float) -> dict[str, Any]:
    """Rates, error rate, percentiles, batch size and queue depth of a set of reports."""
    requests = sum(r.requests for r in reports)
    errors = sum(failed_requests(r.outcomes) for r in reports)
    merged = histograms.merge(r.latency_histogram for r in reports)
    weighted_batch = [(r.mean_batch_size, r.requests) for r in reports if r.mean_batch_size is not None]
    batch_weight = sum(w for _, w in weighted_batch)
    return {
        "requests": requests,
        "requests_per_s": requests / seconds if seconds > 0 else 0.0,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_p50_ms": histograms.quantile(merged, 0.5),
        "latency_p95_ms": histograms.quantile(merged, 0.95),
        "latency_p99_ms": histograms.quantile(merged, 0.99),
        "mean_batch_size": sum(b * w for b, w in weighted_batch) / batch_weight if batch_weight else None,
    }


def _latest_per_worker(reports: list[Report]) -> list[Report]:
    latest: dict[int | None, Report] = {}
    for report in reports:
        if report.worker_id not in latest or report.end > latest[report.worker_id].end:
            latest[report.worker_id] = report
    return list(latest.values())


def live_numbers(reports: list[Report], seconds: float) -> dict[str, Any]:
    """``summarize`` plus what is 'now': queue depth and device use of each worker's latest report."""
    numbers = summarize(reports, seconds)
    latest = _latest_per_worker(reports)
    gpu = [r for r in latest if r.gpu_utilization is not None]
    numbers.update(
        {
            "queue_depth": sum(r.queue_depth for r in latest),
            "gpu_utilization": sum(r.gpu_utilization or 0 for r in gpu) / len(gpu) if gpu else None,
            "gpu_memory_bytes": sum(r.gpu_memory_bytes or 0 for r in gpu) if gpu else None,
        }
    )
    return numbers


def overview(*, window_s: int = 60, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per deployment: status, replicas, live numbers, problems. Problems sort first."""
    now = now or timezone.now()
    since = now - timedelta(seconds=window_s)
    workers = Worker.objects.exclude(state=WorkerState.STOPPED).select_related("version")
    deployments = Deployment.objects.select_related("model").prefetch_related(
        Prefetch("variants", queryset=Variant.objects.select_related("version").order_by("id")),
        Prefetch("variants__workers", queryset=workers),
    )
    reports_by_deployment: dict[int, list[Report]] = defaultdict(list)
    for report in Report.objects.filter(resolution=Report.Resolution.RAW, end__gt=since):
        reports_by_deployment[report.deployment_id].append(report)
    rolled_back = set(
        Rollout.objects.filter(
            state=Rollout.State.ROLLED_BACK, finished_at__gt=now - timedelta(hours=24)
        ).values_list("deployment_id", flat=True)
    )
    rows = []
    for deployment in deployments.order_by("name"):
        variants = list(deployment.variants.all())
        all_workers = [w for v in variants for w in v.workers.all()]
        numbers = live_numbers(reports_by_deployment[deployment.pk], window_s)
        rows.append(
            {
                "name": deployment.name,
                "model": deployment.model.name,
                "status": deployment.status,
                "replicas_ready": sum(1 for w in all_workers if w.state == WorkerState.READY),
                "replicas_desired": sum(v.replicas for v in variants) if deployment.desired_running else 0,
                "variants": [
                    {
                        "name": v.name,
                        "version": v.version.version,
                        "weight": v.weight,
                        "shadow": v.shadow_percent,
                    }
                    for v in variants
                ],
                **numbers,
                "problems": _problems(deployment, all_workers, numbers, deployment.pk in rolled_back),
            }
        )
    rows.sort(key=lambda r: (not r["problems"], r["name"]))
    return rows


def _problems(
    deployment: Deployment, workers: list[Worker], numbers: dict[str, Any], rolled_back: bool
) -> list[str]:
    problems = []
    failed = [w for w in workers if w.state == WorkerState.FAILED]
    unhealthy = [w for w in workers if w.state == WorkerState.UNHEALTHY]
    if deployment.status == "failed":
        problems.append("deployment failed")
    if failed:
        problems.append(f"{len(failed)} failed worker{'s' if len(failed) > 1 else ''}")
    if unhealthy:
        problems.append(f"{len(unhealthy)} unhealthy worker{'s' if len(unhealthy) > 1 else ''}")
    if rolled_back:
        problems.append("a rollout was rolled back in the last 24 h")
    if numbers["error_rate"] is not None and numbers["error_rate"] > settings.KILN_SLO_ERROR_RATE:
        problems.append(
            f"error rate {numbers['error_rate']:.1%} over the SLO of {settings.KILN_SLO_ERROR_RATE:.1%}"
        )
    p99 = numbers["latency_p99_ms"]
    if p99 is not None and p99 > settings.KILN_SLO_P99_MS:
        problems.append(f"p99 {p99:.1f} ms over the SLO of {settings.KILN_SLO_P99_MS:g} ms")
    return problems


def deployment_series(
    deployment: Deployment, range_name: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """Time series per variant (and per charted worker) over a range, bucketed by the range's step.

    Aggregated in SQL from the range's rollup tier (``series_sql``): the cost follows the
    buckets shown and the workers, not the reports kept; per-worker lines are capped.
    """
    chart = RANGES.get(range_name, RANGES["15m"])
    now = now or timezone.now()
    start = now - timedelta(seconds=chart.seconds)
    first = int(start.timestamp()) // chart.step_s * chart.step_s
    buckets = list(range(first, int(now.timestamp()) + 1, chart.step_s))
    found = series_sql.aggregate(
        deployment.pk,
        chart.resolution,
        chart.step_s,
        datetime.fromtimestamp(first, tz=UTC),
        _charted_workers(deployment),
    )
    variants = list(deployment.variants.order_by("id"))
    return {
        "range": chart.name,
        "step_s": chart.step_s,
        "refresh_s": chart.refresh_s,
        "last_report": found.last_end.isoformat() if found.last_end else None,
        "t": buckets,
        "variants": {
            v.name: {
                **_variant_series(v.pk, buckets, found, chart.step_s),
                "desired_replicas": _desired_replicas(v, buckets, chart.step_s, start),
            }
            for v in variants
        },
        "workers": _worker_series(found, buckets),
        "workers_limit": settings.KILN_SERIES_MAX_WORKERS,
        "gateway": gateway_numbers(deployment),
    }


def _variant_series(
    variant_id: int, buckets: list[int], found: series_sql.Aggregates, step: int
) -> dict[str, Any]:
    series: dict[str, Any] = {
        "requests_per_s": [],
        "latency_p50_ms": [],
        "latency_p95_ms": [],
        "latency_p99_ms": [],
        "queue_depth": [],
        "replicas": [],
    }
    outcomes = sorted(
        {k for (v, _), counts in found.outcomes.items() if v == variant_id for k in counts if k != SUCCESS}
    )
    errors: dict[str, list[float | None]] = {outcome: [] for outcome in outcomes}
    for bucket in buckets:
        row = found.scalars.get((variant_id, bucket))
        histogram = found.latency.get((variant_id, bucket), {})
        series["requests_per_s"].append(round(row["requests"] / step, 3) if row else None)
        series["latency_p50_ms"].append(histograms.quantile(histogram, 0.5))
        series["latency_p95_ms"].append(histograms.quantile(histogram, 0.95))
        series["latency_p99_ms"].append(histograms.quantile(histogram, 0.99))
        series["queue_depth"].append(round(row["queue_depth"], 3) if row else None)
        series["replicas"].append(int(row["replicas"]) if row else 0)
        counts = found.outcomes.get((variant_id, bucket), {})
        for outcome in outcomes:
            errors[outcome].append(round(counts.get(outcome, 0) / step, 3) if row else None)
    series["errors_per_s"] = errors
    series["batch_histogram"] = found.batch.get(variant_id, {})
    return series


def _desired_replicas(variant: Variant, buckets: list[int], step: int, start: datetime) -> list[int]:
    """The replica count asked for at the end of each bucket: the autoscaler's decisions as steps."""
    decisions = list(variant.scaling.filter(created_at__gt=start).order_by("created_at", "id"))
    before = variant.scaling.filter(created_at__lte=start).order_by("-created_at", "-id").first()
    current = before.to_replicas if before else decisions[0].from_replicas if decisions else variant.replicas
    values, index = [], 0
    for bucket in buckets:
        while index < len(decisions) and decisions[index].created_at.timestamp() < bucket + step:
            current = decisions[index].to_replicas
            index += 1
        values.append(current)
    return values


def _charted_workers(deployment: Deployment) -> list[int]:
    """The workers with a line of their own: the live ones first, then the newest; at most
    ``KILN_SERIES_MAX_WORKERS``, so a chart costs the same for 20 workers or 2,000."""
    gone = Case(When(state__in=(WorkerState.STOPPED, WorkerState.FAILED), then=1), default=0)
    workers = Worker.objects.filter(variant__deployment=deployment).order_by(gone, "-pk")
    return list(workers.values_list("pk", flat=True)[: settings.KILN_SERIES_MAX_WORKERS])


def _worker_series(found: series_sql.Aggregates, buckets: list[int]) -> dict[str, Any]:
    ids = {worker_id for worker_id, _ in found.workers}
    workers = {w.pk: w for w in Worker.objects.filter(pk__in=ids).select_related("variant")}
    out: dict[str, Any] = {}
    for worker_id in sorted(ids):
        worker = workers.get(worker_id)
        if worker is None:
            continue

        def series(field: str, scale: float = 1.0, worker_id: int = worker_id) -> list[float | None]:
            values: list[float | None] = []
            for bucket in buckets:
                value = found.workers.get((worker_id, bucket), {}).get(field)
                values.append(None if value is None else round(value * scale, 3))
            return values

        out[str(worker_id)] = {
            "variant": worker.variant.name,
            "state": worker.state,
            "node": worker.node,
            "cpu_percent": series("cpu_percent"),
            "rss_mb": series("rss_bytes", 1 / 2**20),
            "gpu_utilization_percent": series("gpu_utilization", 100.0),
            "gpu_memory_mb": series("gpu_memory_bytes", 1 / 2**20),
        }
    return out


def series_etag(deployment: Deployment, range_name: str, *, now: datetime | None = None) -> str:
    """A tag that changes when the answer of ``deployment_series`` may: a new report, a new bucket,
    a worker's state, the gateways' numbers. Costs a few indexed reads, not the aggregation."""
    chart = RANGES.get(range_name, RANGES["15m"])
    now = now or timezone.now()
    newest = (
        Report.objects.filter(deployment=deployment, resolution=Report.Resolution.RAW)
        .order_by("-end")
        .values_list("end", flat=True)
        .first()
    )
    states = list(
        Worker.objects.filter(variant__deployment=deployment)
        .order_by("pk")
        .values_list("pk", "state", "node")
    )
    variants = list(deployment.variants.order_by("id").values_list("pk", "name"))
    key = json.dumps(
        [
            chart.name,
            int(now.timestamp()) // chart.step_s,
            str(newest),
            states,
            variants,
            gateway_numbers(deployment),
        ],
        sort_keys=True,
        default=str,
    )
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def gateway_numbers(deployment: Deployment) -> dict[str, Any]:
    """What the gateways saw per variant: requests, statuses, latency percentiles, shadow comparison."""
    stats = variant_stats(deployment.name, read_snapshots())
    out: dict[str, Any] = {}
    for name, numbers in stats.items():
        summary = shadow_summary(numbers)
        out[name] = {
            "requests": numbers.requests,
            "responses": dict(numbers.responses),
            "latency_p50_ms": histograms.quantile_of(numbers.latency_ms, 0.5),
            "latency_p99_ms": histograms.quantile_of(numbers.latency_ms, 0.99),
            "shadow": None
            if summary is None
            else {
                "sent": summary.sent,
                "dropped": summary.dropped,
                "errors": summary.errors,
                "compared": summary.compared,
                "argmax_agreement": summary.argmax_agreement,
                "mean_max_abs_diff": summary.mean_max_abs_diff,
                "max_abs_diff": summary.max_abs_diff,
                "shadow_p50_ms": histograms.quantile_of(summary.latency_ms, 0.5),
                "live_p50_ms": histograms.quantile_of(summary.live_latency_ms, 0.5),
                "shadow_p99_ms": histograms.quantile_of(summary.latency_ms, 0.99),
                "live_p99_ms": histograms.quantile_of(summary.live_latency_ms, 0.99),
            },
        }
    return out


def version_numbers(version_id: int, *, window_s: int = 60) -> list[dict[str, Any]]:
    """Live numbers of every variant serving a version (three queries, whatever the variant count)."""
    since = timezone.now() - timedelta(seconds=window_s)
    variants = list(
        Variant.objects.filter(workers__version_id=version_id).distinct().select_related("deployment")
    )
    ids = [variant.pk for variant in variants]
    reports: dict[int, list[Report]] = {}
    for report in Report.objects.filter(variant_id__in=ids, resolution=Report.Resolution.RAW, end__gt=since):
        reports.setdefault(report.variant_id, []).append(report)
    ready = dict(
        Worker.objects.filter(variant_id__in=ids, state=WorkerState.READY, version_id=version_id)
        .values_list("variant_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    rows = []
    for variant in variants:
        served = reports.get(variant.pk, [])
        if not ready.get(variant.pk) and not served:
            continue
        rows.append(
            {
                "deployment": variant.deployment.name,
                "variant": variant.name,
                "weight": variant.weight,
                "replicas_ready": ready.get(variant.pk, 0),
                **live_numbers(served, window_s),
            }
        )
    return rows
