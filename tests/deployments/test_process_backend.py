"""Deployments on the process backend with real worker processes, a real Celery worker and beat."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Report, Worker
from registry import storage
from tests.support.deployments import deployment, infer, ready_workers
from tests.support.polling import wait_for
from tests.support.services import Platform
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_replicas_serve_report_restart_and_scale(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    version = stored_version(owner, tmp_path)
    created = owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 2}]},
        format="json",
    )
    assert created.status_code == 201, created.content

    workers = ready_workers(owner_api, 2)

    batch = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(storage.resolve(version.onnx_path))).run(None, {"image": batch})[0]
    for worker in workers:
        assert worker["http_url"].startswith("http://127.0.0.1:")
        np.testing.assert_allclose(
            infer(worker["http_url"], "cnn-prod", batch), expected, rtol=1e-5, atol=1e-5
        )
    assert deployment(owner_api)["status"] == "serving"

    # Reports arrive and service discovery lists the workers.
    wait_for(lambda: Report.objects.filter(worker_id__in=[w["id"] for w in workers]).count() >= 2, timeout=15)
    targets = owner_api.get("/api/v1/prometheus/targets/").json()
    assert sorted(t["labels"]["worker"] for t in targets) == sorted(str(w["id"]) for w in workers)
    assert {t["labels"]["deployment"] for t in targets} == {"cnn-prod"}
    assert httpx.get(f"http://{targets[0]['targets'][0]}/metrics", timeout=5).status_code == 200

    # SIGKILL one worker: the reconcile loop brings a replacement within 10 s.
    victim = Worker.objects.get(pk=workers[0]["id"])
    os.kill(int(victim.handle.split(":")[0]), signal.SIGKILL)
    replaced = wait_for(
        lambda: Worker.objects.filter(variant=victim.variant, state="ready", restarts=1).first(),
        timeout=10,
        interval=0.2,
        message="a replacement worker",
    )
    assert replaced.pk != victim.pk
    assert Worker.objects.get(pk=victim.pk).state == "stopped"

    # Scale to 3, then to 1.
    owner_api.post("/api/v1/deployments/cnn-prod/variants/primary/scale/", {"replicas": 3}, format="json")
    ready_workers(owner_api, 3)
    owner_api.post("/api/v1/deployments/cnn-prod/variants/primary/scale/", {"replicas": 1}, format="json")
    remaining = ready_workers(owner_api, 1)
    wait_for(lambda: Worker.objects.filter(state__in=("draining", "starting")).count() == 0, timeout=20)
    assert Worker.objects.filter(state="ready").count() == 1
    np.testing.assert_allclose(
        infer(remaining[0]["http_url"], "cnn-prod", batch), expected, rtol=1e-5, atol=1e-5
    )

    # Delete: accepted at once; the reconcile loop drains and stops the worker, then the row goes.
    pid = int(Worker.objects.get(state="ready").handle.split(":")[0])
    deleted = owner_api.delete("/api/v1/deployments/cnn-prod/")
    assert deleted.status_code == 202, deleted.content
    assert deleted.json()["status"] == "deleting"
    wait_for(
        lambda: owner_api.get("/api/v1/deployments/cnn-prod/").status_code == 404,
        timeout=60,
        interval=0.3,
        message="the deployment gone",
    )
    assert not _alive(pid)
    assert Worker.objects.count() == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return status != "Z"  # a zombie has exited; its parent (the Celery worker) reaps it later


def test_report_tokens_are_checked_per_worker(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path)
    owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 2}]},
        format="json",
    )
    first, second = ready_workers(owner_api, 2)
    url = f"{platform.url}/api/v1/workers/{first['id']}/reports/"
    report = {
        "schema": "kiln.worker-report/v1",
        "interval": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:01Z"},
        "window": {"requests": 1},
    }

    missing = httpx.post(url, json=report, timeout=5)
    wrong = httpx.post(url, json=report, headers={"Authorization": "Bearer not-the-token"}, timeout=5)
    # The second worker's real token, read from its environment, is refused for the first worker.
    pid = int(Worker.objects.get(pk=second["id"]).handle.split(":")[0])
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
    )
    other = httpx.post(
        url,
        json=report,
        headers={"Authorization": f"Bearer {environ['KILN_WORKER_REPORT_TOKEN']}"},
        timeout=5,
    )
    own_url = f"{platform.url}/api/v1/workers/{second['id']}/reports/"
    own = httpx.post(
        own_url,
        json=report,
        headers={"Authorization": f"Bearer {environ['KILN_WORKER_REPORT_TOKEN']}"},
        timeout=5,
    )

    assert (missing.status_code, wrong.status_code, other.status_code) == (401, 401, 401)
    assert "token" in wrong.json()["message"]
    assert own.status_code == 202


def test_a_model_that_crashes_at_start_ends_failed_with_the_reason(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, onnx_bytes=b"\x08\x07this is not a loadable onnx graph" * 10)
    owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 1}]},
        format="json",
    )

    failed = wait_for(
        lambda: deployment(owner_api)["status"] == "failed" and deployment(owner_api),
        timeout=90,
        interval=0.5,
    )

    assert "crash" in failed["status_reason"].lower() or "exited" in failed["status_reason"].lower()
    assert "onnx" in failed["status_reason"].lower() or "model" in failed["status_reason"].lower()
    worker = failed["variants"][0]["workers"][-1]
    assert worker["state"] == "failed"
    assert worker["restarts"] == 2


def test_after_a_platform_restart_running_workers_are_adopted_not_duplicated(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path)
    owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 2}]},
        format="json",
    )
    before = {w["id"]: Worker.objects.get(pk=w["id"]).handle for w in ready_workers(owner_api, 2)}

    platform.restart()
    import time

    deadline = time.monotonic() + 8  # several reconcile passes of the new platform processes
    while time.monotonic() < deadline:
        assert Worker.objects.exclude(state="stopped").count() == 2
        time.sleep(0.5)

    after = {w["id"]: Worker.objects.get(pk=w["id"]).handle for w in ready_workers(owner_api, 2)}
    assert after == before
