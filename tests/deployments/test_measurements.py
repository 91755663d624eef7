"""Serving-advice measurements end to end: the API queues a run, a real Celery worker starts the real
inference worker with each proposed batching and loads it, and the advice quotes the rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Measurement, MeasurementRun
from deployments.services.batching import propose_batching
from deployments.services.measurements import config_key
from inference_worker.contracts.batching import encode_batching
from registry.models import ModelVersion
from tests.support.polling import wait_for
from tests.support.services import CeleryWorker
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

URL = "/api/v1/models/cnn/versions/1/measurements/"
ADVICE = "/api/v1/models/cnn/versions/1/advice/?latency_budget_ms=50&target_rps=1000000"
CODECS = {"per_request_ms": {"http_binary": 0.01, "http_json": 0.05}}


@pytest.fixture(autouse=True)
def _short_measurements(settings: Any) -> None:
    """Set before the Celery worker starts (it reads them from its environment)."""
    settings.KILN_ADVICE_MEASURE_SECONDS = 0.4
    settings.KILN_ADVICE_MEASURE_CLIENTS = [1, 4]
    settings.KILN_ADVICE_MEASURE_INSTANCES = [1]


def finished(api: APIClient, timeout: float = 120) -> dict[str, Any]:
    def poll() -> dict[str, Any] | None:
        run: dict[str, Any] | None = api.get(URL).json()["run"]
        return run if run and run["status"] in ("done", "failed") else None

    result: dict[str, Any] = wait_for(poll, timeout=timeout, interval=0.3, message="the measurement to end")
    return result


def measured_version(owner: User, tmp_path: Path) -> ModelVersion:
    version = stored_version(owner, tmp_path)
    version.report = {**version.report, "protocols": CODECS}
    version.save(update_fields=["report"])
    return version


def test_a_run_records_what_the_worker_served_and_the_advice_quotes_those_rows(
    owner: User, owner_api: APIClient, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    version = measured_version(owner, tmp_path)
    predicted = owner_api.get(ADVICE).json()
    assert predicted["measured"] is False
    assert predicted["throughput_basis"].startswith("Predicted, not measured")
    assert predicted["measurement"] is None

    queued = owner_api.post(URL, {"latency_budget_ms": 50}, format="json")
    assert queued.status_code == 202, queued.content
    run = finished(owner_api)

    assert run["status"] == "done", (run, celery_worker.log_tail())
    rows = list(Measurement.objects.filter(version=version))
    # batches 1 and 8 fit the budget: 2 configurations x 2 protocols x 2 client counts
    assert len(rows) == 8
    assert {(r.max_batch_size, r.protocol, r.concurrency) for r in rows} == {
        (b, p, c) for b in (1, 8) for p in ("http_json", "http_binary") for c in (1, 4)
    }
    for row in rows:
        assert row.requests > 0
        assert row.errors == 0
        assert row.worker_requests >= row.requests  # the worker's own counter grew by at least as much
        assert row.throughput_rps == pytest.approx(row.requests / row.seconds, abs=0.1)
        assert row.p50_ms is not None
        assert row.p99_ms is not None
        assert row.p99_ms >= row.p50_ms

    advice = owner_api.get(ADVICE).json()
    proposal = propose_batching(version.report, latency_budget_ms=50, target_rps=1_000_000)
    chosen = [
        r for r in rows if r.config_key == config_key(proposal.batching) and r.protocol == proposal.protocol
    ]
    quoted = max(
        (r for r in chosen if r.p99_ms is not None and r.p99_ms <= 50), key=lambda r: r.throughput_rps
    )
    assert advice["measured"] is True
    assert advice["choice"]["measured_throughput_rps"] == quoted.throughput_rps
    assert advice["choice"]["measured_p99_ms"] == quoted.p99_ms
    assert advice["replicas"] == math.ceil(1_000_000 / quoted.throughput_rps)
    assert advice["deploy"]["replicas"] == str(advice["replicas"])
    assert advice["batching"] == encode_batching(proposal.batching)  # what the deploy form proposes
    assert advice["throughput_basis"].startswith("Measured on this machine at ")
    assert f"{quoted.throughput_rps:,.0f} req/s" in advice["shortfall"]
    assert len(advice["measurements"]) == 8
    assert advice["measurement"]["status"] == "done"

    again = owner_api.post(URL, {}, format="json")
    assert again.status_code == 202, again.content
    second = finished(owner_api)

    assert second["status"] == "done", (second, celery_worker.log_tail())
    assert second["id"] != run["id"]
    after = list(Measurement.objects.filter(version=version))
    assert len(after) == 8  # the cells were measured again: replaced, not duplicated
    assert {r.run_id for r in after} == {second["id"]}
    assert {r.pk for r in after} == {r.pk for r in rows}


def test_a_worker_that_cannot_start_ends_the_run_failed_with_the_reason(
    owner: User, owner_api: APIClient, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, onnx_bytes=b"this is not an ONNX model")

    assert owner_api.post(URL, {}, format="json").status_code == 202
    run = finished(owner_api)

    assert run["status"] == "failed"
    assert run["error"].startswith("the worker exited before it was ready:")
    assert not Measurement.objects.exists()
    assert MeasurementRun.objects.get(pk=run["id"]).worker_handle == ""
