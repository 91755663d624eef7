"""The dashboard's series come from the rollup tier of the range, summed in SQL, each report counted once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deployments import histograms
from deployments.models import Deployment, Report, Variant, Worker
from deployments.series import RANGES, deployment_series
from deployments.services import downsample_reports
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db
LE = [1.0, 2.0, 5.0, 10.0, 50.0, "+Inf"]


@pytest.fixture
def workers(owner: User) -> list[Worker]:
    version = ready_version(owner)
    deployment = Deployment.objects.create(name="fraud", model=version.model, created_by=owner)
    primary = Variant.objects.create(deployment=deployment, name="primary", version=version)
    canary = Variant.objects.create(deployment=deployment, name="canary", version=version, weight=0)
    return [
        Worker.objects.create(variant=variant, version=version, backend="process", state="ready")
        for variant in (primary, primary, canary)
    ]


def _report(worker: Worker, end: datetime, counts: list[int], *, errors: int = 0, cpu: float = 50.0) -> None:
    _row(worker, end, counts, errors=errors, cpu=cpu).save()


def _row(worker: Worker, end: datetime, counts: list[int], *, errors: int = 0, cpu: float = 50.0) -> Report:
    requests = sum(counts)
    return Report(
        worker=worker,
        variant=worker.variant,
        deployment=worker.variant.deployment,
        version_number=1,
        start=end - timedelta(seconds=5),
        end=end,
        seconds=5.0,
        requests=requests,
        errors=errors,
        outcomes={"success": requests - errors, **({"timeout": errors} if errors else {})},
        latency_histogram={"le": LE, "counts": counts},
        batch_histogram={"le": ["1", "2", "+Inf"], "counts": [requests, 0, 0]},
        queue_depth=2.0,
        cpu_percent=cpu,
        rss_bytes=2**20 * 100,
    )


def _seed(workers: list[Worker], now: datetime) -> None:
    """Reports every 5 minutes over the last 30 hours, and every 10 s over the last 3 minutes."""
    moments = [now - timedelta(minutes=5 * k, seconds=7) for k in range(1, 360)]
    moments += [now - timedelta(seconds=10 * k + 1) for k in range(18)]
    Report.objects.bulk_create(
        [
            _row(worker, moment, [10 + n, 0, 1, 0, i % 3, 0], errors=i % 2, cpu=10.0 * (n + 1))
            for i, moment in enumerate(moments)
            for n, worker in enumerate(workers)
        ]
    )


def _totals(answer: dict[str, Any], variant: str) -> float:
    return float(sum(v or 0 for v in answer["variants"][variant]["requests_per_s"]) * answer["step_s"])


@pytest.mark.parametrize("range_name", list(RANGES))
def test_each_range_counts_every_report_in_it_once_before_and_after_the_rollups(
    workers: list[Worker], range_name: str
) -> None:
    now = timezone.now()
    _seed(workers, now)
    first = int((now - timedelta(seconds=RANGES[range_name].seconds)).timestamp())
    first -= first % RANGES[range_name].step_s
    shown = Report.objects.filter(
        worker__variant__name="primary", end__gte=datetime.fromtimestamp(first, tz=UTC)
    )
    expected = sum(shown.values_list("requests", flat=True))

    before = deployment_series(workers[0].variant.deployment, range_name, now=now)
    downsample_reports()
    after = deployment_series(workers[0].variant.deployment, range_name, now=now)

    rounding = 0.0005 * after["step_s"] * len(after["t"])  # rates are rounded to 3 decimals
    assert _totals(after, "primary") == pytest.approx(expected, abs=rounding)
    assert after["variants"] == before["variants"]
    assert after["refresh_s"] == RANGES[range_name].refresh_s
    assert after["last_report"] is not None


def test_a_bucket_has_summed_counters_merged_percentiles_errors_and_per_worker_gauges(
    workers: list[Worker],
) -> None:
    now = timezone.now().replace(second=30, microsecond=0)
    bucket = now - timedelta(minutes=3)
    minute = int(bucket.timestamp()) // 60 * 60
    moment = datetime.fromtimestamp(minute + 20, tz=UTC)
    _report(workers[0], moment, [1000, 0, 0, 0, 0, 0], cpu=20.0)
    _report(workers[1], moment, [0, 0, 0, 0, 10, 0], errors=4, cpu=60.0)
    _report(workers[1], moment + timedelta(seconds=5), [0, 0, 0, 0, 10, 0], errors=0, cpu=80.0)

    answer = deployment_series(workers[0].variant.deployment, "1h", now=now)

    i = answer["t"].index(minute)
    primary = answer["variants"]["primary"]
    merged = {"le": [str(b) for b in LE], "counts": [1000, 0, 0, 0, 20, 0]}
    assert primary["requests_per_s"][i] == pytest.approx(1020 / 60, abs=1e-3)
    assert primary["latency_p99_ms"][i] == pytest.approx(histograms.quantile(merged, 0.99))
    assert primary["latency_p50_ms"][i] < 1.0
    assert primary["errors_per_s"] == {
        "timeout": [None] * i + [round(4 / 60, 3)] + [None] * (len(answer["t"]) - i - 1)
    }
    assert primary["batch_histogram"]["counts"] == [1020, 0, 0]
    assert answer["variants"]["canary"]["requests_per_s"][i] is None
    assert answer["workers"][str(workers[0].pk)]["cpu_percent"][i] == pytest.approx(20.0)
    assert answer["workers"][str(workers[1].pk)]["cpu_percent"][i] == pytest.approx(70.0)
    assert answer["workers"][str(workers[1].pk)]["rss_mb"][i] == pytest.approx(100.0)


def test_per_worker_lines_are_capped_live_workers_first_and_the_variants_count_every_worker(
    workers: list[Worker], settings: Any
) -> None:
    settings.KILN_SERIES_MAX_WORKERS = 2
    now = timezone.now()
    Worker.objects.filter(pk=workers[1].pk).update(state="stopped")
    for worker in workers:
        _report(worker, now - timedelta(seconds=20), [6, 0, 0, 0, 0, 0])

    answer = deployment_series(workers[0].variant.deployment, "15m", now=now)

    assert sorted(answer["workers"]) == sorted(str(w.pk) for w in (workers[0], workers[2]))
    assert answer["workers_limit"] == 2
    assert max(r for r in answer["variants"]["primary"]["replicas"]) == 2  # the stopped one counted too
    assert _totals(answer, "primary") == pytest.approx(12.0)


@pytest.mark.parametrize("range_name", list(RANGES))
def test_the_series_runs_the_same_queries_for_few_and_many_reports(
    workers: list[Worker], range_name: str
) -> None:
    deployment = workers[0].variant.deployment
    now = timezone.now()
    _report(workers[0], now - timedelta(seconds=20), [1, 0, 0, 0, 0, 0])
    with CaptureQueriesContext(connection) as few:
        deployment_series(deployment, range_name, now=now)
    _seed(workers, now)
    downsample_reports()
    with CaptureQueriesContext(connection) as many:
        deployment_series(deployment, range_name, now=now)
    # the autoscaler's desired replicas read 2 rows per variant (2 variants here)
    assert len(few) == len(many) <= 16


def test_the_series_endpoint_answers_304_while_nothing_changed(
    workers: list[Worker], staff: User, web_as: Callable[[User], Client]
) -> None:
    web = web_as(staff)
    _report(workers[0], timezone.now() - timedelta(seconds=20), [1, 0, 0, 0, 0, 0])
    url = "/api/v1/dashboard/deployments/fraud/series/?range=7d"

    first = web.get(url)
    again = web.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    _report(workers[1], timezone.now() - timedelta(seconds=10), [1, 0, 0, 0, 0, 0])
    changed = web.get(url, HTTP_IF_NONE_MATCH=first["ETag"])

    assert first.status_code == 200
    assert first.json()["refresh_s"] == 300
    assert again.status_code == 304
    assert changed.status_code == 200
    assert changed["ETag"] != first["ETag"]
