"""The dashboard's numbers under real load through the gateway agree with what the load generator counted."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Report, Worker
from tests.support.e2e import Load, wait_ready, wait_routed
from tests.support.polling import wait_for
from tests.support.services import Platform
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_overview_and_series_agree_with_the_load_and_a_hung_worker_shows_unhealthy_then_replaced(
    platform: Platform,
    owner: User,
    staff: User,
    api_as: Callable[[User], APIClient],
    owner_api: APIClient,
    tmp_path: Path,
) -> None:
    stored_version(owner, tmp_path)
    owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn", "model": "cnn", "variants": [{"version": 1, "replicas": 2}]},
        format="json",
    )
    wait_ready(owner_api, "cnn", {"primary": 2})
    wait_routed(platform.gateway.url, "cnn")
    workers = list(Worker.objects.filter(state="ready"))
    wait_for(lambda: Report.objects.filter(worker__in=workers).count() >= 2, timeout=20)
    start_reports = set(Report.objects.values_list("pk", flat=True))

    load = Load(f"{platform.gateway.url}/v2/models/cnn/infer", clients=2, rate=40)
    with load:  # a steady load the dashboard has to measure: several reports' worth
        wait_for(lambda: load.ok >= 400, timeout=90, interval=0.5, message="400 answered requests")
    # Every worker reports once more after the load stopped, so the window holds all requests.
    last = time.time()
    wait_for(
        lambda: all(Report.objects.filter(worker=w, end__gt=_at(last)).exists() for w in workers), timeout=20
    )

    admin = api_as(staff)
    row = admin.get("/api/v1/dashboard/overview/?window_s=120").json()["deployments"][0]
    counted = round(row["requests_per_s"] * 120)
    served = sum(r.requests for r in Report.objects.exclude(pk__in=start_reports))
    assert load.failures == []
    assert abs(counted - load.ok) <= 0.1 * load.ok, (counted, served, load.ok)
    assert row["latency_p50_ms"] > 0
    assert row["latency_p99_ms"] >= row["latency_p50_ms"]
    assert row["replicas_ready"] == 2
    series = admin.get("/api/v1/dashboard/deployments/cnn/series/?range=15m").json()
    rates = [v for v in series["variants"]["primary"]["requests_per_s"] if v]
    assert abs(sum(rates) * series["step_s"] - load.ok) <= 0.1 * load.ok
    assert any(series["variants"]["primary"]["latency_p99_ms"])
    assert len(series["workers"]) == 2

    # A hung worker (SIGSTOP: alive but silent) shows as unhealthy, then is replaced.
    victim = workers[0]
    pid = int(victim.handle.split(":")[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: _state(admin, victim.pk) == "unhealthy",
            timeout=30,
            message="the worker to turn unhealthy",
        )
        page = owner_api.get("/api/v1/deployments/cnn/").json()
        assert any(
            w["state"] == "unhealthy" and "no report" in w["last_error"]
            for w in page["variants"][0]["workers"]
        )
        wait_for(
            lambda: Worker.objects.filter(state="ready", restarts=1).exists(),
            timeout=60,
            message="a replacement",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_ready(owner_api, "cnn", {"primary": 2})
    problems = admin.get("/api/v1/dashboard/overview/").json()["deployments"][0]["problems"]
    assert not any("unhealthy" in p for p in problems)


def _at(epoch: float) -> object:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


def _state(client: APIClient, worker_id: int) -> str | None:
    body = client.get("/api/v1/deployments/cnn/").json()
    for worker in body["variants"][0]["workers"]:
        if worker["id"] == worker_id:
            return str(worker["state"])
    return None
