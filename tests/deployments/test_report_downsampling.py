"""Raw worker reports fold into per-minute rows: counters add up, percentiles come from merged buckets."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from deployments import histograms
from deployments.models import Deployment, Report, Variant, Worker
from deployments.services.workers import downsample_reports
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

    assert downsample_reports() == {"folded": 2, "expired": 0}

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

    assert first["folded"] == 2
    assert first["expired"] == 1  # the ancient minute, folded then past retention
    assert Report.objects.count() == 1
    assert downsample_reports() == {"folded": 0, "expired": 0}
    assert Report.objects.get().resolution == Report.Resolution.MINUTE
