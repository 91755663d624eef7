"""Report rollups, kept by one beat task; retention in batches.

Two families of tiers: per worker (raw -> 1m -> 10m -> 1h), for the workers' own gauges, and
per variant (raw -> v15s -> v1m -> v10m -> v1h: every worker of the variant in one row), for
the variants' lines. Each tier folds the next finer one period by period: counters and
histogram buckets add up (so percentiles stay exact to the bucket), gauges are averaged (a
variant's queue depth is its workers' total). A tier's watermark is the end of its newest row;
the next pass starts there, and a period is folded only once the finer tier covers it whole
(raw rows wait out a lag for late reports); a pass reads at most ``FOLD_ROWS_PER_PASS`` finer rows
a tier, in one query. Finer rows are kept for their own retention, and until folded, so a
chart reads the tier of its step, then finer ones for the newest part: a few rows per variant
per bucket, however many workers report (``deployments/series_sql.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from deployments import histograms
from deployments.models import Report
from deployments.services.pruning import delete_in_batches

R = Report.Resolution
RAW = R.RAW
FOLD_ROWS_PER_PASS = 20_000
"""Finer rows one pass reads per tier (in one query); the next pass goes on from its watermark."""
DELETE_BATCH = 5000
MAX_DELETE_BATCHES = 200


@dataclass(frozen=True)
class Tier:
    """One resolution: its width, the finer tier it folds, and how long its rows are kept."""

    resolution: str
    seconds: int
    finer: str | None

    def retention_s(self) -> float:
        if self.seconds < 60:
            return float(settings.KILN_REPORT_RAW_RETENTION_S)
        if self.seconds == 60:
            return max(float(settings.KILN_REPORT_RAW_RETENTION_S), 26 * 3600.0)
        return float(settings.KILN_REPORT_RETENTION_DAYS) * 86400

    @property
    def per_variant(self) -> bool:
        return self.resolution in VARIANT_RESOLUTIONS


TIERS = (
    Tier(R.RAW, 0, None),
    Tier(R.MINUTE, 60, R.RAW),
    Tier(R.TEN_MINUTES, 600, R.MINUTE),
    Tier(R.HOUR, 3600, R.TEN_MINUTES),
)
VARIANT_TIERS = (
    Tier(R.VARIANT_15S, 15, R.RAW),
    Tier(R.VARIANT_MINUTE, 60, R.VARIANT_15S),
    Tier(R.VARIANT_TEN_MINUTES, 600, R.VARIANT_MINUTE),
    Tier(R.VARIANT_HOUR, 3600, R.VARIANT_TEN_MINUTES),
)
VARIANT_RESOLUTIONS = frozenset(t.resolution for t in VARIANT_TIERS)
WORKER_TIER_OF = {t.seconds: t.resolution for t in TIERS[1:]}
TIER = {tier.resolution: tier for tier in (*TIERS, *VARIANT_TIERS)}


def variant_tier(step_s: int) -> Tier:
    """The variants' tier whose rows are one chart bucket of ``step_s`` seconds."""
    return next(t for t in VARIANT_TIERS if t.seconds == step_s)


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
    for family in (TIERS[1:], VARIANT_TIERS):
        limit = now - timedelta(seconds=lag)
        for tier in family:
            folded[tier.resolution], limit = _roll_up(tier, limit)
    expired = 0
    for tier in (*TIERS, *VARIANT_TIERS):
        cutoff = now - timedelta(seconds=tier.retention_s())
        folded_until: datetime | None = None
        for coarser in (t for t in (*TIERS, *VARIANT_TIERS) if t.finer == tier.resolution):
            # Never a row a coarser tier has not folded yet (a backlog longer than the retention).
            mark = watermark(coarser.resolution) or datetime.min.replace(tzinfo=UTC)
            folded_until = mark if folded_until is None else min(folded_until, mark)
        expired += _delete_in_batches(tier.resolution, cutoff, folded_until)
    return {**folded, "expired": expired}


def watermark(resolution: str, deployment_id: int | None = None) -> datetime | None:
    """The end of the newest row of a tier (of one deployment, or of all)."""
    rows = Report.objects.filter(resolution=resolution)
    if deployment_id is not None:
        rows = rows.filter(deployment_id=deployment_id)
    end: datetime | None = rows.aggregate(end=Max("end"))["end"]
    return end


def _roll_up(tier: Tier, limit: datetime) -> tuple[int, datetime]:
    """Fold whole periods of the finer tier that end by ``limit``; the number of finer rows folded,
    and the time up to which every period is folded: ``limit``, unless the pass stopped early.
    The next tier folds its periods ending by then (a coarser period is whole once its finer
    periods are folded, whether or not they held rows)."""
    finer_tier = tier.finer or Report.Resolution.RAW
    mark = watermark(tier.resolution)
    if mark is None and tier.per_variant and tier.seconds in WORKER_TIER_OF:
        # Its first pass: the history the workers' tier of the same width already holds.
        finer_tier = WORKER_TIER_OF[tier.seconds]
    width = timedelta(seconds=tier.seconds)
    at = position_field(finer_tier)
    # Whole periods only: one that starts before the limit's own period ends by the limit.
    finer = Report.objects.filter(resolution=finer_tier, **{f"{at}__lt": floor_time(limit, tier.seconds)})
    if mark is not None:
        finer = finer.filter(**{f"{at}__gte": mark})
    rows = list(finer.order_by(at, "pk")[: FOLD_ROWS_PER_PASS + 1])  # one read for many periods
    periods: dict[datetime, list[Report]] = {}
    for row in rows[:FOLD_ROWS_PER_PASS]:
        periods.setdefault(floor_time(getattr(row, at), tier.seconds), []).append(row)
    reached = limit
    if len(rows) > FOLD_ROWS_PER_PASS:  # more than a pass reads: its last period may be cut short
        reached = next(reversed(periods))
        if len(periods) > 1:
            del periods[reached]  # the next pass reads it whole
        else:  # one period holds more rows than a pass reads: read it whole now
            periods[reached] = list(finer.filter(**{f"{at}__lt": reached + width}).order_by(at, "pk"))
            reached += width
    folder = fold_variant if tier.per_variant else fold
    made: list[Report] = []
    for period, in_period in periods.items():
        groups: dict[tuple[int | None, int], list[Report]] = {}
        for row in in_period:
            groups.setdefault((None if tier.per_variant else row.worker_id, row.variant_id), []).append(row)
        made += [folder(group, period, tier) for group in groups.values()]
    with transaction.atomic():
        Report.objects.bulk_create(made, batch_size=500)
    return sum(len(in_period) for in_period in periods.values()), reached


def _delete_in_batches(resolution: str, cutoff: datetime, folded_until: datetime | None) -> int:
    """Delete rows of ``resolution`` that ended before ``cutoff`` and, where coarser tiers fold them,
    sit in a period folded already (before ``folded_until``, by where the row sits in time: a
    rollup that ends at the mark was folded, a raw report that ends there was not)."""
    old = Report.objects.filter(resolution=resolution, end__lt=cutoff)
    if folded_until is not None:
        old = old.filter(**{f"{position_field(resolution)}__lt": folded_until})
    return delete_in_batches(old, size=DELETE_BATCH, most=MAX_DELETE_BATCHES)[0]


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


def fold_variant(reports: list[Report], period: datetime, tier: Tier) -> Report:
    """One row of a variant's ``tier`` for its ``reports`` in the period from ``period`` (unsaved).

    From workers' rows (raw reports, or a workers' tier on the first pass): the queue depth and
    requests in flight are the workers' total (each worker's mean, added up) and ``replicas`` the
    workers that reported. From a finer variant tier: their means over the period. Worker gauges
    (CPU, memory, GPU) stay per worker.
    """
    row = fold(reports, period, tier)
    if reports[0].resolution not in VARIANT_RESOLUTIONS:
        by_worker: dict[int | None, list[Report]] = {}
        for r in reports:
            by_worker.setdefault(r.worker_id, []).append(r)
        queue = sum(sum(r.queue_depth for r in rs) / len(rs) for rs in by_worker.values())
        in_flight = sum(sum(r.in_flight for r in rs) / len(rs) for rs in by_worker.values())
        replicas = float(len(by_worker))
    else:
        queue = sum(r.queue_depth for r in reports) / len(reports)
        in_flight = sum(r.in_flight for r in reports) / len(reports)
        replicas = sum(r.replicas or 0.0 for r in reports) / len(reports)
    row.worker_id = None
    row.seconds = float(tier.seconds)
    row.queue_depth, row.in_flight, row.replicas = queue, in_flight, replicas
    row.cpu_percent = row.rss_bytes = row.gpu_utilization = row.gpu_memory_bytes = None
    return row
