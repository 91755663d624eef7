"""Asking for a serving-advice measurement: who may, what is refused, what queues a run, the sweep."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from config.outbox.models import OutboxMessage
from deployments.models import MeasurementRun
from deployments.services.batching import candidate_batchings, propose_batching
from deployments.services.measurements import MAX_TRIES, measured_configurations, sweep_measurements
from registry import hooks
from tests.support.versions import PROFILE, ready_version

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/cnn/versions/1/measurements/"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"latency_budget_ms": "fast"}, "latency_budget_ms"),
        ({"latency_budget_ms": -1}, "latency_budget_ms"),
        ({"latency_budget_ms": 0}, "latency_budget_ms"),
        ({"latency_budget_ms": 1e12}, "latency_budget_ms"),
    ],
)
def test_a_bad_budget_is_a_400_naming_the_field(
    owner: User, owner_api: APIClient, body: dict[str, Any], field: str
) -> None:
    ready_version(owner)

    answer = owner_api.post(URL, body, format="json")

    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] == "invalid"
    assert field in answer.json()["extra"]["fields"]
    assert not MeasurementRun.objects.exists()


def test_a_measurement_is_queued_once_at_a_time_and_refused_for_what_cannot_be_measured(
    owner: User,
    owner_api: APIClient,
    outsider: User,
    api_as: Callable[[User], APIClient],
    anonymous_api: APIClient,
) -> None:
    ready_version(owner)
    ready_version(owner, number=2, status="failed")

    queued = owner_api.post(URL, {"latency_budget_ms": 20}, format="json")
    twice = owner_api.post(URL, {}, format="json")
    failed = owner_api.post("/api/v1/models/cnn/versions/2/measurements/", {}, format="json")
    missing = owner_api.post("/api/v1/models/cnn/versions/9/measurements/", {}, format="json")
    foreign = api_as(outsider).post(URL, {}, format="json")
    anonymous = anonymous_api.post(URL, {}, format="json")

    assert queued.status_code == 202, queued.content
    assert queued.json()["status"] == "queued"
    assert queued.json()["latency_budget_ms"] == 20
    assert (twice.status_code, twice.json()["code"]) == (409, "measurement_running")
    assert twice.json()["extra"]["run"] == queued.json()["id"]
    assert (failed.status_code, failed.json()["code"]) == (409, "version_not_ready")
    assert missing.status_code == 404
    assert foreign.status_code == 403
    assert anonymous.status_code == 401
    assert anonymous_api.get(URL).status_code == 401
    assert list(MeasurementRun.objects.values_list("status", flat=True)) == ["queued"]
    assert OutboxMessage.objects.filter(task="deployments.measure_version").count() == 1
    shown = owner_api.get(URL).json()
    assert shown["run"]["id"] == queued.json()["id"]
    assert shown["rows"] == []


def test_the_version_page_button_queues_a_run_and_says_so(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    ready_version(owner)
    web = web_as(owner)
    page = web.get("/models/cnn/versions/1/")
    assert 'action="/models/cnn/versions/1/measure/"' in page.content.decode()
    token = page.cookies["csrftoken"].value

    answer = web.post(
        "/models/cnn/versions/1/measure/",
        {"latency_budget_ms": "25", "csrfmiddlewaretoken": token},
        follow=True,
    )
    refused = web.post(
        "/models/cnn/versions/1/measure/",
        {"latency_budget_ms": "-3", "csrfmiddlewaretoken": token},
        follow=True,
    )

    assert "Measurement queued" in answer.content.decode()
    assert MeasurementRun.objects.get().latency_budget_ms == 25
    assert "Latency budget:" in refused.content.decode()
    assert MeasurementRun.objects.count() == 1


def test_a_run_measures_every_batching_the_rule_can_propose_and_the_largest_with_more_instances(
    settings: Any,
) -> None:
    settings.KILN_ADVICE_MEASURE_INSTANCES = [1, 2]

    configurations = measured_configurations(PROFILE, latency_budget_ms=9)

    candidates = candidate_batchings(PROFILE, latency_budget_ms=9)
    assert [c.max_batch_size for c in configurations] == [1, 2, 4, 8, 8]  # 16 takes 2 x 5 ms > 9
    assert configurations[:4] == candidates
    assert configurations[4].instances == 2
    for target in (100, 1000, 2000, 100_000):  # whatever the target, the rule answers one of them
        assert propose_batching(PROFILE, latency_budget_ms=9, target_rps=target).batching in candidates


def test_a_conversion_queues_a_measurement_only_when_configured(owner: User, settings: Any) -> None:
    version = ready_version(owner)

    hooks.version_ready.call(version=version)
    assert not MeasurementRun.objects.exists()

    settings.KILN_ADVICE_MEASURE_AFTER_CONVERSION = True
    hooks.version_ready.call(version=version)
    assert MeasurementRun.objects.get().latency_budget_ms == settings.KILN_LATENCY_BUDGET_MS


def test_the_sweep_fails_a_run_whose_job_went_silent_too_often_with_a_reason(owner: User) -> None:
    version = ready_version(owner)
    long_ago = timezone.now() - timedelta(hours=1)
    run = MeasurementRun.objects.create(
        version=version,
        latency_budget_ms=50,
        status="running",
        tries=MAX_TRIES,
        attempt="00000000-0000-0000-0000-000000000001",
        step="batch 8, 1 instance(s): HTTP JSON at concurrency 16",
        started_at=timezone.now() - timedelta(minutes=2),
        heartbeat_at=long_ago,
        worker_handle="999999:1",
    )

    counts = sweep_measurements()

    run.refresh_from_db()
    assert counts["failed"] == 1
    assert run.status == "failed"
    assert run.error == (
        f"the measurement was interrupted {MAX_TRIES} times (its worker stopped); "
        "last step: batch 8, 1 instance(s): HTTP JSON at concurrency 16"
    )
    assert run.worker_handle == ""  # the orphan clean-up may stop that worker now
