"""Reading a live deployment through the API, as a user's script would; a two-arm deployment's rows."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.support.polling import wait_for
from tests.support.versions import ready_version


def deployment(client: APIClient, name: str = "cnn-prod") -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/deployments/{name}/").json()
    return body


def ready_workers(
    client: APIClient, count: int, name: str = "cnn-prod", timeout: float = 60
) -> list[dict[str, Any]]:
    def poll() -> list[dict[str, Any]] | None:
        workers = [
            w for v in deployment(client, name)["variants"] for w in v["workers"] if w["state"] == "ready"
        ]
        return workers if len(workers) == count and all(w["last_heartbeat"] for w in workers) else None

    result: list[dict[str, Any]] = wait_for(
        poll, timeout=timeout, interval=0.3, message=f"{count} ready workers"
    )
    return result


def infer(url: str, name: str, batch: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
        ]
    }
    response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def two_ready_arms(owner: User, client: APIClient) -> None:
    """Deployment ``ab``: ``a`` (follows production = v1, 100%) and ``b`` (v2, 0%), ready worker rows."""
    from deployments.models import Variant, Worker

    ready_version(owner)
    ready_version(owner, number=2)
    client.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json")
    response = client.post(
        "/api/v1/deployments/",
        {
            "name": "ab",
            "model": "cnn",
            "variants": [{"name": "a", "alias": "production"}, {"name": "b", "version": 2, "weight": 0}],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    for variant in Variant.objects.all():
        Worker.objects.create(variant=variant, version=variant.version, backend="process", state="ready")
