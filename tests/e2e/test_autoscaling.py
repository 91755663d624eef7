"""Autoscaling with real workers, the real gateway, Celery and beat: up under load, down after the
delay, to zero when idle, and 50 concurrent first callers after idle all answered (the activator).

No timing is asserted: the deadlines only bound how long the test may wait.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.support.e2e import Load, request_body, wait_ready, wait_routed
from tests.support.polling import wait_for
from tests.support.services import Platform
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(600)]
POLICY = "/api/v1/deployments/cnn/variants/primary/autoscaling/"


def variant(client: APIClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/api/v1/deployments/cnn/").json()["variants"][0]
    return body


def ready(client: APIClient) -> int:
    return sum(1 for w in variant(client)["workers"] if w["state"] == "ready")


def reasons(client: APIClient) -> list[str]:
    return [d["reason"] for d in reversed(variant(client)["scaling_decisions"])]


def test_replicas_follow_a_step_load_go_to_zero_when_idle_and_wake_for_50_first_callers(
    platform: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, number=1, seed=1)
    created = owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn", "model": "cnn", "variants": [{"version": 1, "replicas": 1}]},
        format="json",
    )
    assert created.status_code == 201, created.content
    wait_ready(owner_api, "cnn", {"primary": 1})
    wait_routed(platform.gateway.url, "cnn")
    policy = {"min_replicas": 1, "max_replicas": 3, "target_in_flight": 0.25}
    delays = {"upscale_delay_s": 2, "downscale_delay_s": 15, "idle_before_zero_s": 3}
    assert owner_api.put(POLICY, {**policy, **delays}, format="json").status_code == 202

    url = f"{platform.gateway.url}/v2/models/cnn/infer"
    with Load(url, clients=8) as load:
        wait_for(lambda: ready(owner_api) == 3, timeout=120, interval=0.5, message="3 ready replicas")
        served = load.ok
        wait_for(lambda: load.ok > served + 50, timeout=60, message="requests served by 3 replicas")
        load.stop()
    assert load.failures == []
    wait_for(
        lambda: variant(owner_api)["replicas"] == 1 and ready(owner_api) == 1,
        timeout=60,
        interval=0.5,
        message="one replica again after the downscale delay",
    )
    assert "load_up" in reasons(owner_api)
    assert reasons(owner_api)[-1] == "load_down"

    assert owner_api.put(POLICY, {"min_replicas": 0}, format="json").status_code == 202
    wait_for(
        lambda: variant(owner_api)["replicas"] == 0 and variant(owner_api)["workers"] == [],
        timeout=60,
        interval=0.5,
        message="no worker left after the idle time",
    )
    assert reasons(owner_api)[-1] == "idle"

    bodies = [request_body(np.random.default_rng(seed)) for seed in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda body: httpx.post(url, json=body, timeout=120), bodies))

    assert [a.status_code for a in answers] == [200] * 50, [a.text for a in answers if a.status_code != 200]
    assert {a.headers["X-Kiln-Variant"] for a in answers} == {"primary"}
    history = reasons(owner_api)
    assert history[len(history) - history[::-1].index("idle") :][:1] == ["activate"], history
    assert variant(owner_api)["cold_start_s"] > 0
