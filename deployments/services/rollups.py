"""Report rollups: raw -> 1m -> 10m -> 1h buckets per worker, kept by one beat task; retention in batches.

Each tier folds the next finer one period by period: counters and histogram buckets
add up (so percentiles stay exact to the bucket), gauges are averaged. A tier's
watermark is the end of its newest row; the next pass starts there, and a period
is folded only once the finer tier covers it whole (raw rows wait out a lag for
late reports). Finer rows are kept for their own retention, so the 15-minute chart
reads raw rows, the hour 1m rows, the day 10m rows and the week 1h rows, each
from a few rows per worker per bucket (``deployments/series_sql.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Min
from django.utils import timezone

from deployments import histograms
from deployments.models import Report

R = Report.Resolution
MAX_PERIODS_PER_PASS = 2000
DELETE_BATCH = 5000
MAX_DELETE_BATCHES = 200


@dataclass(frozen=True)
class Tier:
    """One resolution: its width, the finer tier it folds, and how long its rows are kept."""

    resolution: str
    seconds: int
    finer: str | None

    def retention_s(self) -> float:
        if self.resolution == R.RAW:
            return float(settings.KILN_REPORT_RAW_RETENTION_S)
        if self.resolution == R.MINUTE:
            return max(float(settings.KILN_REPORT_RAW_RETENTION_S), 26 * 3600.0)
        return float(settings.KILN_REPORT_RETENTION_DAYS) * 86400


TIERS = (
    Tier(R.RAW, 0, None),
    Tier(R.MINUTE, 60, R.RAW),
    Tier(R.TEN_MINUTES, 600, R.MINUTE),
    Tier(R.HOUR, 3600, R.TEN_MINUTES),
)
TIER = {tier.resolution: tier for tier in TIERS}


def position_field(resolution: str) -> str:
    """Where a row sits in time: a raw report at its end, a rollup at its period's start."""
    return "end" if resolution == R.RAW else "start"


def floor_time(moment: datetime, seconds: int) -> datetime:
    epoch = int(moment.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(epoch, tz=UTC)


def downsample_reports(*, now: datetime | None = None) -> dict[str, int]:
    """One pass of the rollup task: fold every tier up to its limit, then apply each tier's retention.

    Answers the finer rows folded into each tier (``{"1m": n, "10m": n, "1h": n}``) and the
    rows deleted past their retention (``"expired"``).
    """
    now = now or timezone.now()
    lag = max(30.0, 2 * float(settings.KILN_REPORT_INTERVAL_S))
    folded: dict[str, int] = {}
    limit = now - timedelta(seconds=lag)
    for tier in TIERS[1:]:
        folded[tier.resolution] = _roll_up(tier, limit)
        limit = watermark(tier.resolution) or limit
    expired = 0
    for tier in TIERS:
        cutoff = now - timedelta(seconds=tier.retention_s())
        expired += _delete_in_batches(tier.resolution, cutoff)
    return {**folded, "expired": expired}


def watermark(resolution: str, deployment_id: int | None = None) -> datetime | None:
    """The end of the newest row of a tier (of one deployment, or of all)."""
    rows = Report.objects.filter(resolution=resolution)
    if deployment_id is not None:
        rows = rows.filter(deployment_id=deployment_id)
    end: datetime | None = rows.aggregate(end=Max("end"))["end"]
    return end


def _roll_up(tier: Tier, limit: datetime) -> int:
    """Fold whole periods of the finer tier that end by ``limit``; the number of finer rows folded."""
    finer_tier = tier.finer or Report.Resolution.RAW
    width = timedelta(seconds=tier.seconds)
    at = position_field(finer_tier)
    finer = Report.objects.filter(resolution=finer_tier)
    mark = watermark(tier.resolution)
    if mark is not None:
        finer = finer.filter(**{f"{at}__gte": mark})
    folded = 0
    for _ in range(MAX_PERIODS_PER_PASS):
        first = finer.aggregate(first=Min(at))["first"]
        if first is None:
            break
        period = floor_time(first, tier.seconds)
        if period + width > limit:
            break
        rows = list(finer.filter(**{f"{at}__gte": period, f"{at}__lt": period + width}).order_by(at))
        groups: dict[tuple[int | None, int], list[Report]] = {}
        for row in rows:
            groups.setdefault((row.worker_id, row.variant_id), []).append(row)
        with transaction.atomic():
            Report.objects.bulk_create([fold(group, period, tier) for group in groups.values()])
        folded += len(rows)
        finer = finer.filter(**{f"{at}__gte": period + width})
    return folded


def _delete_in_batches(resolution: str, cutoff: datetime) -> int:
    deleted = 0
    old = Report.objects.filter(resolution=resolution, end__lt=cutoff)
    for _ in range(MAX_DELETE_BATCHES):
        ids = list(old.values_list("pk", flat=True)[:DELETE_BATCH])
        if not ids:
            break
        deleted += Report.objects.filter(pk__in=ids).delete()[0]
    return deleted


def fold(reports: list[Report], period: datetime, tier: Tier) -> Report:
    """One row of ``tier`` standing for ``reports`` of one worker in the period from ``period`` (unsaved)."""
    first = reports[0]
    outcomes: dict[str, int] = {}
    for r in reports:
        for key, value in r.outcomes.items():
            outcomes[key] = outcomes.get(key, 0) + int(value)

    def weighted(read: Callable[[Report], float | None]) -> float | None:
        """Weighted by each report's requests (a plain mean when none had any)."""
        pairs = [(value, r.requests) for r in reports if (value := read(r)) is not None]
        total = sum(w for _, w in pairs)
        if not pairs:
            return None
        result = sum(v * w for v, w in pairs) / total if total else sum(v for v, _ in pairs) / len(pairs)
        return float(result)

    def mean(read: Callable[[Report], float | None]) -> float | None:
        values = [value for r in reports if (value := read(r)) is not None]
        return sum(values) / len(values) if values else None

    def largest(read: Callable[[Report], int | None]) -> int | None:
        values = [value for r in reports if (value := read(r)) is not None]
        return max(values) if values else None

    latency = histograms.merge(r.latency_histogram for r in reports)

    def percentile(q: float, read: Callable[[Report], float | None]) -> float | None:
        """From the merged buckets; reports without a histogram fall back to the weighted mean."""
        if histograms.total(latency):
            return histograms.quantile(latency, q)
        return weighted(read)

    return Report(
        worker_id=first.worker_id,
        variant_id=first.variant_id,
        deployment_id=first.deployment_id,
        version_number=reports[-1].version_number,
        resolution=tier.resolution,
        start=period,
        end=period + timedelta(seconds=tier.seconds),
        seconds=sum(r.seconds for r in reports),
        requests=sum(r.requests for r in reports),
        errors=sum(r.errors for r in reports),
        outcomes=outcomes,
        latency_histogram=latency,
        batch_histogram=histograms.merge(r.batch_histogram for r in reports),
        latency_p50_ms=percentile(0.5, lambda r: r.latency_p50_ms),
        latency_p95_ms=percentile(0.95, lambda r: r.latency_p95_ms),
        latency_p99_ms=percentile(0.99, lambda r: r.latency_p99_ms),
        mean_batch_size=weighted(lambda r: r.mean_batch_size),
        queue_depth=mean(lambda r: r.queue_depth) or 0.0,
        in_flight=mean(lambda r: r.in_flight) or 0.0,
        cpu_percent=mean(lambda r: r.cpu_percent),
        rss_bytes=largest(lambda r: r.rss_bytes),
        gpu_utilization=mean(lambda r: r.gpu_utilization),
        gpu_memory_bytes=largest(lambda r: r.gpu_memory_bytes),
        samples=sum(r.samples for r in reports),
    )
