"""Conversion end to end: uploads through the API, a real Celery worker on real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from registry.models import ModelVersion
from registry.services import sweep_stale_conversions
from tests.support import torch_models as factories
from tests.support.polling import wait_for
from tests.support.services import CeleryWorker
from tests.support.uploads import create_model, upload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def finished(client: APIClient, number: int, timeout: float = 240) -> dict[str, Any]:
    def poll() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/models/cnn/versions/{number}/").json()
        return body if body["status"] in ("ready", "failed") else None

    result: dict[str, Any] = wait_for(
        poll, timeout=timeout, interval=0.5, message=f"version {number} to finish"
    )
    return result


def upload_ok(client: APIClient, path: Path, signature: dict[str, Any] | None) -> int:
    response = upload(client, "cnn", path, **({"signature": signature} if signature else {}))
    assert response.status_code == 201, response.content
    return int(response.json()["version"])


@pytest.fixture
def model(owner_api: APIClient, settings: Any) -> APIClient:
    settings.KILN_PROFILE_MAX_BATCH = 8
    create_model(owner_api)
    return owner_api


def test_every_accepted_format_converts_to_a_ready_version_with_its_report(
    model: APIClient, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    uploads: list[tuple[Path, Callable[[Path], dict[str, Any]]]] = [
        (tmp_path / "cnn.pt", factories.save_torchscript_cnn),
        (tmp_path / "two.pt", factories.save_two_input_torchscript),
        (tmp_path / "cnn.pt2", factories.save_pt2_cnn),
        (tmp_path / "cnn.onnx", factories.save_onnx_cnn),
    ]
    numbers = []
    for path, save in uploads:
        signature = save(path)
        numbers.append(upload_ok(model, path, signature if path.suffix == ".pt" else None))

    results = [finished(model, n) for n in numbers]

    for result in results:
        assert result["status"] == "ready", (result["status_reason"], celery_worker.log_tail())
        assert result["artifacts"]["onnx"]
        assert result["onnx_sha256"]
        parity = result["report"]["parity"]
        assert 1 in parity["batch_sizes"]
        for output in parity["outputs"].values():
            assert output["max_abs_error"] <= 1e-3
        sizes = [row["batch_size"] for row in result["report"]["profile"]["batches"]]
        assert sizes[:4] == [1, 2, 4, 8]
    assert results[0]["report"]["parity"]["passed"] is True
    assert [t["name"] for t in results[1]["signature"]["inputs"]] == ["tokens", "features"]
    assert results[1]["signature"]["inputs"][0]["dtype"] == "int64"
    assert results[0]["signature"]["outputs"][0]["shape"][0] == -1
    onnx_bytes = model.get(results[0]["artifacts"]["onnx"]).getvalue()
    assert onnx_bytes[:2] == b"\x08\x07" or len(onnx_bytes) > 1000


def test_a_model_whose_export_fails_ends_failed_naming_the_operator(
    model: APIClient, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    path = tmp_path / "fft.pt"
    signature = factories.save_unexportable_torchscript(path)

    result = finished(model, upload_ok(model, path, signature))

    assert result["status"] == "failed"
    assert factories.UNEXPORTABLE_OPERATOR in result["status_reason"]


def test_parity_above_tolerance_fails_with_the_numbers(
    model: APIClient, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    path = tmp_path / "noisy.pt"
    signature = factories.save_noisy_torchscript(path)

    result = finished(model, upload_ok(model, path, signature))

    assert result["status"] == "failed"
    reason = result["status_reason"]
    assert "max abs" in reason.lower() or "max_abs" in reason.lower()
    assert "tolerance" in reason.lower() or "atol" in reason.lower()
    assert result["report"]["parity"]["passed"] is False


def test_a_version_failing_parity_at_its_own_tolerance_converts_again_at_another(
    model: APIClient, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    path = tmp_path / "cnn.pt"
    signature = factories.save_torchscript_cnn(path)
    response = upload(model, "cnn", path, signature=signature, parity_atol="0", parity_rtol="0")
    assert response.status_code == 201, response.content
    assert (response.json()["parity_atol"], response.json()["parity_rtol"]) == (0.0, 0.0)
    number = int(response.json()["version"])
    failed = finished(model, number)
    assert failed["status"] == "failed"
    assert (failed["report"]["parity"]["atol"], failed["report"]["parity"]["rtol"]) == (0.0, 0.0)

    queued = model.post(
        f"/api/v1/models/cnn/versions/{number}/convert/",
        {"parity_atol": 1e-4, "parity_rtol": 1e-3},
        format="json",
    )

    assert queued.status_code == 202, queued.content
    assert queued.json()["status"] == "registered"
    assert (queued.json()["parity_atol"], queued.json()["parity_rtol"]) == (1e-4, 1e-3)
    ready = finished(model, number)
    assert ready["status"] == "ready"
    assert (ready["report"]["parity"]["atol"], ready["report"]["parity"]["rtol"]) == (1e-4, 1e-3)
    again = model.post(f"/api/v1/models/cnn/versions/{number}/convert/")  # no body: keeps its tolerance
    assert again.status_code == 202
    assert (again.json()["parity_atol"], again.json()["parity_rtol"]) == (1e-4, 1e-3)
    events = model.get("/api/v1/audit-events/?model=cnn").json()["results"]
    requested = next(
        e
        for e in events
        if e["action"] == "version.conversion_requested" and e["before"]["parity_atol"] == 0.0
    )
    assert requested["after"]["parity_atol"] == 1e-4


def test_a_celery_worker_killed_mid_conversion_still_ends_ready_after_a_restart(
    model: APIClient, celery_worker: CeleryWorker, tmp_path: Path, settings: Any
) -> None:
    settings.KILN_CONVERT_LEASE_S = 3.0
    celery_worker.stop()
    celery_worker.env["KILN_CONVERT_LEASE_S"] = "3"
    celery_worker.start()
    path = tmp_path / "cnn.pt2"
    factories.save_pt2_cnn(path)
    number = upload_ok(model, path, None)
    wait_for(
        lambda: ModelVersion.objects.filter(version=number, status="converting").exists(),
        timeout=60,
        message="conversion to start",
    )

    celery_worker.kill()
    stuck = ModelVersion.objects.get(version=number)
    assert stuck.status == "converting"
    celery_worker.start()

    def resumed() -> bool:
        sweep_stale_conversions()  # what beat does every few seconds
        return ModelVersion.objects.get(version=number).status in ("ready", "failed")

    wait_for(resumed, timeout=240, interval=2, message="the conversion to resume")
    version = ModelVersion.objects.get(version=number)
    assert version.status == "ready", version.status_reason
    assert version.conversion_tries == 2


def test_a_version_stuck_past_its_tries_is_failed_with_a_reason(owner: Any, settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from registry.models import RegisteredModel

    settings.KILN_CONVERT_MAX_TRIES = 2
    registered = RegisteredModel.objects.create(name="stuck", owner=owner, latest_version=1)
    version = ModelVersion.objects.create(
        model=registered,
        version=1,
        source_format="onnx",
        source_sha256="0" * 64,
        source_size=1,
        source_path="sha256/00/" + "0" * 64,
        created_by=owner,
        status="converting",
        conversion_tries=2,
        conversion_started_at=timezone.now(),
        conversion_heartbeat_at=timezone.now() - timedelta(hours=1),
        progress="profiling batch 8",
    )

    counts = sweep_stale_conversions()

    version.refresh_from_db()
    assert counts["failed"] == 1
    assert version.status == "failed"
    assert "interrupted 2 times" in version.status_reason
    assert "profiling batch 8" in version.status_reason


def test_a_conversion_job_that_runs_out_of_retries_fails_its_version_with_the_error(owner: Any) -> None:
    """What Celery calls when the retries run out or the time limit kills the job."""
    from registry.models import RegisteredModel
    from registry.tasks import convert_version_task

    registered = RegisteredModel.objects.create(name="lost", owner=owner, latest_version=1)
    version = ModelVersion.objects.create(
        model=registered,
        version=1,
        source_format="onnx",
        source_sha256="1" * 64,
        source_size=1,
        source_path="sha256/11/" + "1" * 64,
        created_by=owner,
        status="converting",
        conversion_attempt=uuid.uuid4(),
    )
    attempt, stale = str(version.conversion_attempt), str(uuid.uuid4())
    failure = OSError("database went away")

    convert_version_task.on_failure(failure, "task-id", (version.pk, stale), {}, None)
    version.refresh_from_db()
    assert version.status == "converting"  # a stale attempt's failure does not touch a newer one

    convert_version_task.on_failure(failure, "task-id", (version.pk, attempt), {}, None)
    version.refresh_from_db()
    assert version.status == "failed"
    assert version.status_reason == "conversion job failed: OSError: database went away"
