"""Deployments through the gateway: one stable endpoint, zero failed requests while the alias rolls."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from registry import storage
from tests.support.e2e import IMAGE, GrpcLoad, Load, request_body, rollout_end, wait_ready, wait_routed
from tests.support.polling import wait_for
from tests.support.services import Platform
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
GUARDED_ROLLOUT = {
    "candidate": "candidate",
    "steps": [25, 50, 100],
    "hold_s": 30,
    "max_error_rate": 0.05,
    "max_p99_ms": 2000,
    "min_requests": 10,
}
"""A rollout of ``candidate`` whose guard a failing candidate trips at the first step."""


def test_one_endpoint_serves_through_the_gateway_and_an_alias_move_rolls_without_a_failed_request(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    v1 = stored_version(owner, tmp_path, number=1, seed=1)
    stored_version(owner, tmp_path, number=2, seed=2)
    owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json")
    created = owner_api.post(
        "/api/v1/deployments/",
        {
            "name": "cnn",
            "model": "cnn",
            "on_alias_move": "immediate",
            "variants": [{"alias": "production", "replicas": 2}],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["endpoint"]["infer"] == f"{platform.gateway.url}/v2/models/cnn/infer"
    wait_ready(owner_api, "cnn", {"primary": 2})
    wait_routed(platform.gateway.url, "cnn")

    body = request_body(np.random.default_rng(3))
    answer = httpx.post(f"{platform.gateway.url}/v2/models/cnn/infer", json=body, timeout=10)
    expected = ort.InferenceSession(str(storage.resolve(v1.onnx_path))).run(
        None, {"image": np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(1, 3, 16, 16)}
    )[0]
    assert answer.status_code == 200
    assert answer.headers["X-Kiln-Variant"] == "primary"
    assert answer.headers["X-Kiln-Model-Version"] == "1"
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-5, atol=1e-5)
    unknown = httpx.post(f"{platform.gateway.url}/v2/models/nothing/infer", json=body, timeout=10)
    assert unknown.status_code == 404

    with Load(f"{platform.gateway.url}/v2/models/cnn/infer", clients=4) as load:
        wait_for(lambda: load.ok > 50, timeout=30)
        moved = owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 2}, format="json")
        assert moved.status_code == 200
        wait_for(
            lambda: (
                load.versions["2"] > 50
                and owner_api.get("/api/v1/deployments/cnn/").json()["status"] == "serving"
                and all(
                    w["version"] == 2
                    for w in owner_api.get("/api/v1/deployments/cnn/").json()["variants"][0]["workers"]
                )
            ),
            timeout=120,
            interval=0.5,
            message="the roll to v2",
        )
        load.stop()

    assert load.failures == []
    assert load.versions["1"] > 0
    assert load.versions["2"] > 50


def test_a_healthy_candidate_rolls_out_to_100_percent(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, number=1, seed=1)
    stored_version(owner, tmp_path, number=2, seed=2)
    owner_api.post(
        "/api/v1/deployments/", {"name": "cnn", "model": "cnn", "variants": [{"version": 1}]}, format="json"
    )
    owner_api.post("/api/v1/deployments/cnn/variants/", {"name": "candidate", "version": 2}, format="json")
    wait_ready(owner_api, "cnn", {"primary": 1, "candidate": 1})
    wait_routed(platform.gateway.url, "cnn")

    with Load(f"{platform.gateway.url}/v2/models/cnn/infer", clients=3):
        started = owner_api.post(
            "/api/v1/deployments/cnn/rollouts/",
            {
                "candidate": "candidate",
                "steps": [20, 100],
                "hold_s": 4,
                "max_error_rate": 0.05,
                "max_p99_ms": 2000,
                "min_requests": 10,
            },
            format="json",
        )
        assert started.status_code == 201, started.content
        rollout_id = started.json()["id"]
        final = rollout_end(owner_api, "cnn", rollout_id, timeout=180)

    assert final["state"] == "succeeded", final
    split = owner_api.get("/api/v1/deployments/cnn/traffic/").json()
    # promoted: primary (the stable variant) serves v2 and has the traffic back
    assert split["split"]["primary"]["weight"] == 100
    assert split["split"]["candidate"]["weight"] == 0
    assert [h["kind"] for h in split["history"]][:3] == ["promote", "rollout", "rollout"]
    primary = owner_api.get("/api/v1/deployments/cnn/variants/primary/").json()
    assert primary["version"] == 2
    assert all(w["version"] == 2 for w in primary["workers"] if w["state"] == "ready")


def test_a_candidate_that_rejects_the_live_inputs_is_rolled_back_within_its_first_step(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, number=1, seed=1)
    stored_version(owner, tmp_path, number=2, seed=2, input_name="pixels")  # expects another input name
    owner_api.post(
        "/api/v1/deployments/", {"name": "cnn", "model": "cnn", "variants": [{"version": 1}]}, format="json"
    )
    owner_api.post("/api/v1/deployments/cnn/variants/", {"name": "candidate", "version": 2}, format="json")
    wait_ready(owner_api, "cnn", {"primary": 1, "candidate": 1})
    wait_routed(platform.gateway.url, "cnn")

    with Load(f"{platform.gateway.url}/v2/models/cnn/infer", clients=3) as load:
        started = owner_api.post("/api/v1/deployments/cnn/rollouts/", GUARDED_ROLLOUT, format="json")
        assert started.status_code == 201, started.content
        rollout_id = started.json()["id"]
        final = rollout_end(owner_api, "cnn", rollout_id, timeout=60)

    assert final["state"] == "rolled_back"
    assert final["step_index"] == 0
    assert "error rate" in final["reason"]
    assert "above the objective of 5.0%" in final["reason"]
    assert load.variants["candidate"] > 0
    traffic = owner_api.get("/api/v1/deployments/cnn/traffic/").json()
    assert traffic["split"]["candidate"]["weight"] == 0
    assert traffic["history"][0]["kind"] == "rollback"
    events = owner_api.get("/api/v1/audit-events/?action=rollout.rolled_back").json()["results"]
    assert events
    assert "error rate" in events[0]["reason"]


def test_grpc_clients_reach_the_deployment_through_the_gateway_and_a_failing_candidate_is_rolled_back(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, number=1, seed=1)
    stored_version(owner, tmp_path, number=2, seed=2, input_name="pixels")  # expects another input name
    created = owner_api.post(
        "/api/v1/deployments/", {"name": "cnn", "model": "cnn", "variants": [{"version": 1}]}, format="json"
    )
    assert created.json()["endpoint"]["grpc"] == platform.gateway.grpc
    owner_api.post("/api/v1/deployments/cnn/variants/", {"name": "candidate", "version": 2}, format="json")
    wait_ready(owner_api, "cnn", {"primary": 1, "candidate": 1})
    wait_routed(platform.gateway.url, "cnn")

    with GrpcLoad(platform.gateway.grpc, "cnn", clients=3) as load:
        wait_for(lambda: load.ok > 20, timeout=30, message="gRPC answers through the gateway")
        assert load.failures == []
        started = owner_api.post("/api/v1/deployments/cnn/rollouts/", GUARDED_ROLLOUT, format="json")
        assert started.status_code == 201, started.content
        final = rollout_end(owner_api, "cnn", started.json()["id"], timeout=60)
        served_before = load.ok
        wait_for(lambda: load.ok > served_before + 20, timeout=30, message="answers after the rollback")
        failed_before = len(load.failures)
        wait_for(lambda: load.ok > served_before + 60, timeout=30, message="more answers after the rollback")
        failed_after = len(load.failures)

    assert final["state"] == "rolled_back", final
    assert "error rate" in final["reason"]
    assert load.variants["primary"] > 0
    assert load.failures, "the candidate refused some of the gRPC requests routed to it"
    refusals = [f for f in load.failures if "INVALID_ARGUMENT" in f and "unknown input 'image'" in f]
    assert refusals, load.failures
    assert failed_after == failed_before  # back at 0 %: no request reaches the candidate any more
    traffic = owner_api.get("/api/v1/deployments/cnn/traffic/").json()
    assert traffic["split"]["candidate"]["weight"] == 0


def test_top_k_answers_through_the_gateway_carry_the_labels_a_version_is_given_after_it_deployed(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, number=1, seed=1)
    created = owner_api.post(
        "/api/v1/deployments/", {"name": "cnn", "model": "cnn", "variants": [{"version": 1}]}, format="json"
    )
    assert created.status_code == 201, created.content
    wait_ready(owner_api, "cnn", {"primary": 1})
    wait_routed(platform.gateway.url, "cnn")
    body = {
        **request_body(np.random.default_rng(5)),
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    }

    def top3() -> list[str]:
        answer = httpx.post(f"{platform.gateway.url}/v2/models/cnn/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["outputs"][0]["data"])

    before = top3()
    names = [f"digit {i}" for i in range(10)]
    changed = owner_api.patch("/api/v1/models/cnn/versions/1/", {"class_labels": names}, format="json")
    assert changed.status_code == 200, changed.content
    # The reconcile loop rolls the variant's worker onto the labels; the gateway keeps answering.
    wait_for(lambda: all(item.count(":") == 2 for item in top3()), timeout=120, interval=0.5,
             message="answers with labels after the rolling update")  # fmt: skip

    after = top3()
    assert all(item.count(":") == 1 for item in before)
    assert [item.rsplit(":", 1)[0] for item in after] == before  # same scores and classes, now named
    assert [item.split(":")[2] for item in after] == [names[int(item.split(":")[1])] for item in after]
    client = triton_grpc.InferenceServerClient(platform.gateway.grpc)
    image = triton_grpc.InferInput("image", [1, *IMAGE], "FP32")
    image.set_data_from_numpy(np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(1, *IMAGE))
    asked = triton_grpc.InferRequestedOutput("logits", class_count=3)
    over_grpc = client.infer("cnn", [image], outputs=[asked]).as_numpy("logits")
    assert [item.decode() for item in over_grpc[0]] == after
