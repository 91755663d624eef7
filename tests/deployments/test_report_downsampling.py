"""Raw worker reports fold into per-minute rows: counters add up, percentiles come from merged buckets."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from deployments import histograms
from deployments.models import Deployment, Report, Variant, Worker
from deployments.services import downsample_reports, rollups
from tests.support.versions import ready_version

LE = [1.0, 2.0, 5.0, 10.0, 50.0, "+Inf"]


@pytest.fixture
def worker(owner: User) -> Worker:
    version = ready_version(owner)
    deployment = Deployment.objects.create(name="fraud", model=version.model, created_by=owner)
    variant = Variant.objects.create(deployment=deployment, name="primary", version=version)
    return Worker.objects.create(variant=variant, version=version, backend="process", state="ready")


def _report(worker: Worker, end: datetime, counts: list[int], p99: float, **fields: Any) -> Report:
    requests = sum(counts)
    return Report.objects.create(
        worker=worker,
        variant=worker.variant,
        deployment=worker.variant.deployment,
        version_number=worker.version.version,
        start=end - timedelta(seconds=10),
        end=end,
        seconds=10.0,
        requests=requests,
        errors=fields.pop("errors", 0),
        outcomes={"200": requests},
        latency_histogram={"le": LE, "counts": counts},
        batch_histogram={"le": [1, 2, 4, "+Inf"], "counts": [requests, 0, 0, 0]},
        latency_p50_ms=1.0,
        latency_p95_ms=p99,
        latency_p99_ms=p99,
        **fields,
    )


@pytest.mark.django_db
def test_raw_reports_of_one_minute_fold_into_one_row_with_percentiles_from_the_merged_buckets(
    worker: Worker, settings: Any
) -> None:
    settings.KILN_REPORT_RAW_RETENTION_S = 3600
    minute = (timezone.now() - timedelta(hours=2)).replace(second=0, microsecond=0)
    # A busy fast report and a nearly idle slow one: averaging their p99s would say ~25 ms,
    # while 99% of the minute's 1,010 requests took under 1 ms.
    _report(worker, minute + timedelta(seconds=10), [1000, 0, 0, 0, 0, 0], p99=0.99, cpu_percent=80.0)
    _report(worker, minute + timedelta(seconds=20), [0, 0, 0, 0, 10, 0], p99=49.6, cpu_percent=20.0, errors=2)
    recent = _report(worker, timezone.now(), [5, 0, 0, 0, 0, 0], p99=0.9)

    result = downsample_reports()
    # folded into the worker's minute and the variant's quarter-minutes, then past the raw retention
    assert (result["1m"], result["v15s"], result["expired"]) == (2, 2, 4)

    folded = Report.objects.get(resolution=Report.Resolution.MINUTE)
    assert folded.start == minute
    assert folded.end == minute + timedelta(minutes=1)
    assert (folded.requests, folded.errors, folded.samples) == (1010, 2, 2)
    assert folded.outcomes == {"200": 1010}
    assert folded.latency_histogram == {"le": LE, "counts": [1000, 0, 0, 0, 10, 0]}
    assert folded.latency_p99_ms == pytest.approx(histograms.quantile(folded.latency_histogram, 0.99))
    assert folded.latency_p99_ms is not None
    assert folded.latency_p99_ms < 1.0
    assert folded.latency_p50_ms == pytest.approx(0.505)
    assert folded.cpu_percent == pytest.approx(50.0)
    assert list(Report.objects.filter(resolution=Report.Resolution.RAW)) == [recent]
    whole = Report.objects.get(resolution=Report.Resolution.VARIANT_MINUTE)
    assert (whole.worker_id, whole.start, whole.requests, whole.replicas) == (None, minute, 1010, 1.0)
    assert whole.latency_histogram == folded.latency_histogram


@pytest.mark.django_db
def test_reports_past_the_retention_are_dropped_and_a_second_pass_changes_nothing(
    worker: Worker, settings: Any
) -> None:
    settings.KILN_REPORT_RAW_RETENTION_S = 3600
    settings.KILN_REPORT_RETENTION_DAYS = 7
    ancient = timezone.now() - timedelta(days=8)
    _report(worker, ancient, [3, 0, 0, 0, 0, 0], p99=0.9)
    _report(worker, timezone.now() - timedelta(hours=2), [3, 0, 0, 0, 0, 0], p99=0.9)

    first = downsample_reports()

    assert first["1m"] == 2
    assert not Report.objects.filter(end__lt=timezone.now() - timedelta(days=7)).exists()
    assert not Report.objects.filter(resolution=Report.Resolution.RAW).exists()
    kept = Report.objects.order_by("resolution", "end")
    assert {r.resolution for r in kept} <= {"1m", "10m", "1h", "v1m", "v10m", "v1h"}
    assert all(r.requests == 3 for r in kept)
    assert set(downsample_reports().values()) == {0}


def _hour_ago(hours: int) -> datetime:
    now = timezone.now()
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)


@pytest.mark.django_db
def test_minutes_fold_into_ten_minutes_and_hours_once_the_finer_tier_covers_them(
    worker: Worker, settings: Any
) -> None:
    settings.KILN_REPORT_RAW_RETENTION_S = 3600
    base = _hour_ago(4)
    _report(worker, base + timedelta(seconds=10), [100, 0, 0, 0, 0, 0], p99=0.9, cpu_percent=10.0)
    _report(worker, base + timedelta(seconds=20), [0, 0, 0, 0, 4, 0], p99=40.0, cpu_percent=30.0)
    _report(worker, base + timedelta(minutes=30, seconds=10), [10, 0, 0, 0, 0, 0], p99=0.9)
    _report(worker, base + timedelta(minutes=65), [7, 0, 0, 0, 0, 0], p99=0.9)
    _report(worker, base + timedelta(minutes=120, seconds=5), [5, 0, 0, 0, 0, 0], p99=0.9)

    result = downsample_reports()

    assert {k: result[k] for k in ("1m", "10m", "1h")} == {"1m": 5, "10m": 4, "1h": 4}
    tiers = {
        resolution: [(r.start - base, r.requests) for r in Report.objects.filter(resolution=resolution)]
        for resolution in ("1m", "10m", "1h", "v1m", "v10m", "v1h")
    }
    for tier in ("1m", "10m", "1h"):  # one worker: the variant's rows are the worker's
        assert sorted(tiers["v" + tier]) == sorted(tiers[tier])
    minutes = timedelta(minutes=1)
    assert sorted(tiers["1m"]) == [
        (0 * minutes, 104),
        (30 * minutes, 10),
        (65 * minutes, 7),
        (120 * minutes, 5),
    ]
    # every period that ended before the pass is folded, though no later report came
    assert sorted(tiers["10m"]) == [
        (0 * minutes, 104),
        (30 * minutes, 10),
        (60 * minutes, 7),
        (120 * minutes, 5),
    ]
    assert sorted(tiers["1h"]) == [(0 * minutes, 114), (60 * minutes, 7), (120 * minutes, 5)]
    hour = Report.objects.get(resolution="1h", start=base)
    assert hour.end == base + timedelta(hours=1)
    assert hour.latency_histogram == {"le": LE, "counts": [110, 0, 0, 0, 4, 0]}
    assert hour.latency_p99_ms == pytest.approx(histograms.quantile(hour.latency_histogram, 0.99))
    assert hour.samples == 3
    assert hour.cpu_percent == pytest.approx(20.0)
    assert set(downsample_reports().values()) == {0}


@pytest.mark.django_db
def test_a_variant_row_adds_up_its_workers_and_later_passes_fold_its_quarter_minutes(
    worker: Worker, settings: Any
) -> None:
    """Two workers in one minute: one variant row with both workers' requests, their total queue
    and 2 replicas. The first pass takes the workers' minutes it finds; the next one folds the
    variant's own quarter-minutes."""
    settings.KILN_REPORT_RAW_RETENTION_S = 3 * 3600
    other = Worker.objects.create(variant=worker.variant, version=worker.version, backend="process")
    base = _hour_ago(2)
    _report(worker, base + timedelta(seconds=10), [10, 0, 0, 0, 0, 0], p99=0.9, queue_depth=2.0)
    _report(worker, base + timedelta(seconds=40), [10, 0, 0, 0, 0, 0], p99=0.9, queue_depth=4.0)
    _report(other, base + timedelta(seconds=20), [0, 0, 5, 0, 0, 0], p99=4.0, queue_depth=1.0)
    _report(worker, base + timedelta(minutes=5, seconds=10), [7, 0, 0, 0, 0, 0], p99=0.9, queue_depth=1.0)

    downsample_reports(now=base + timedelta(minutes=3))
    downsample_reports()

    minutes = {r.start - base: r for r in Report.objects.filter(resolution=Report.Resolution.VARIANT_MINUTE)}
    first, later = minutes[timedelta(0)], minutes[timedelta(minutes=5)]
    assert (first.worker_id, first.requests, first.replicas, first.queue_depth) == (None, 25, 2.0, 4.0)
    assert first.latency_histogram == {"le": LE, "counts": [20, 0, 5, 0, 0, 0]}
    assert (later.requests, later.replicas, later.queue_depth) == (7, 1.0, 1.0)
    ten = Report.objects.get(resolution=Report.Resolution.VARIANT_TEN_MINUTES, start=base)
    assert (ten.requests, ten.worker_id) == (32, None)


@pytest.mark.django_db
def test_a_pass_reads_a_bounded_number_of_rows_and_later_passes_fold_the_rest_once(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With at most 5 finer rows a pass: a period cut short at the bound waits for the next pass, a
    period holding more rows than the bound is read whole, and every request is counted once."""
    monkeypatch.setattr(rollups, "FOLD_ROWS_PER_PASS", 5)
    base = _hour_ago(3)
    for minute in range(4):  # 3 reports in each of 4 minutes
        for second in (5, 25, 45):
            _report(worker, base + timedelta(minutes=minute, seconds=second), [1, 0, 0, 0, 0, 0], p99=0.9)
    for second in range(1, 60, 5):  # 12 reports in one minute, more than a pass reads
        _report(worker, base + timedelta(minutes=30, seconds=second), [2, 0, 0, 0, 0, 0], p99=0.9)

    passes = [downsample_reports()["1m"] for _ in range(6)]

    minutes = {r.start - base: r.requests for r in Report.objects.filter(resolution="1m")}
    assert minutes == {timedelta(minutes=m): 3 for m in range(4)} | {timedelta(minutes=30): 24}
    assert sum(passes) == 24
    assert passes[0] == 3  # a whole minute; the second, cut at the bound, waits
    assert passes[-1] == 0
    hours = Report.objects.filter(resolution="1h")
    assert sum(hours.values_list("requests", flat=True)) == 12 + 24
