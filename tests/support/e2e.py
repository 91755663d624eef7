"""Shared pieces of the end-to-end tests: stored versions, deployments, a load generator."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
from rest_framework.test import APIClient

from tests.support.polling import wait_for

IMAGE = (3, 16, 16)


def request_body(rng: np.random.Generator | None = None, name: str = "image") -> dict[str, Any]:
    rng = rng or np.random.default_rng()
    data = rng.standard_normal((1, *IMAGE)).astype(np.float32)
    return {
        "inputs": [{"name": name, "datatype": "FP32", "shape": [1, *IMAGE], "data": data.ravel().tolist()}]
    }


def ready_count(client: APIClient, deployment: str) -> dict[str, int]:
    body = client.get(f"/api/v1/deployments/{deployment}/").json()
    return {v["name"]: v["ready_replicas"] for v in body["variants"]}


def wait_ready(client: APIClient, deployment: str, expected: dict[str, int], timeout: float = 90) -> None:
    wait_for(
        lambda: ready_count(client, deployment) == expected,
        timeout=timeout,
        interval=0.3,
        message=f"{deployment} to have {expected} ready",
    )


def wait_routed(gateway_url: str, deployment: str, timeout: float = 30) -> None:
    """Until the gateway answers the deployment (its routing table arrived)."""

    def ok() -> bool:
        try:
            return (
                httpx.post(
                    f"{gateway_url}/v2/models/{deployment}/infer", json=request_body(), timeout=5
                ).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    wait_for(ok, timeout=timeout, interval=0.3, message=f"the gateway to route {deployment}")


class Load:
    """Clients looping requests through the gateway, counting outcomes and the variants that answered."""

    def __init__(
        self, url: str, *, clients: int = 4, rate: float | None = None, input_name: str = "image"
    ) -> None:
        self.url = url
        self.clients = clients
        self.rate = rate
        self.input_name = input_name
        self.statuses: Counter[int] = Counter()
        self.variants: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def _loop(self, index: int) -> None:
        rng = np.random.default_rng(index)
        interval = self.clients / self.rate if self.rate else 0.0
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(
                        self.url,
                        json=request_body(rng, self.input_name),
                        headers={"X-Routing-Key": f"k{rng.integers(1 << 30)}"},
                    )
                    elapsed = time.monotonic() - started
                    with self._lock:
                        self.statuses[response.status_code] += 1
                        self.latencies.append(elapsed)
                        self.variants[response.headers.get("X-Kiln-Variant", "?")] += 1
                        self.versions[response.headers.get("X-Kiln-Model-Version", "?")] += 1
                        if response.status_code != 200:
                            self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.statuses[0] += 1
                        self.failures.append(repr(exc))
                if interval:
                    time.sleep(max(0.0, interval - (time.monotonic() - started)))


def rollout_end(client: APIClient, deployment: str, rollout_id: int, *, timeout: float) -> dict[str, Any]:
    """The rollout once it ended (succeeded, rolled back, aborted or timed out)."""
    url = f"/api/v1/deployments/{deployment}/rollouts/{rollout_id}/"

    def ended() -> dict[str, Any] | None:
        rollout: dict[str, Any] = client.get(url).json()
        return rollout if rollout["state"] in ("succeeded", "rolled_back", "aborted", "timed_out") else None

    result: dict[str, Any] = wait_for(ended, timeout=timeout, interval=1, message="the rollout to end")
    return result
