"""Deployments on a real two-node Docker Swarm: replicas spread over the nodes and answering through two
gateways, a killed task replaced and shown, a drained node and a rolling update under load without a
failed request, a constraint no node meets, scaling 4 -> 1 -> 3, nothing left after a delete.

The swarm (two dockerd of our own and a registry, ``tests/support/swarm_cluster.py``) comes up once
for the session; the first test builds the worker image on the manager and pushes it to the
registry, the others find it there. Run alone with ``.venv/bin/pytest -m swarm`` (as root: it starts
its own engines); ``bash .ci/setup.d/swarm.sh`` installs what it needs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Worker
from tests.support.polling import wait_for
from tests.support.services import Gateway, Platform
from tests.support.swarm_cluster import SwarmCluster
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.swarm, pytest.mark.slow]

NAME = "cnn-swarm"


def deploy(client: APIClient, version: int, replicas: int, **variant: Any) -> None:
    created = client.post(
        "/api/v1/deployments/",
        {"name": NAME, "model": "cnn", "variants": [{"version": version, "replicas": replicas, **variant}]},
        format="json",
    )
    assert created.status_code == 201, created.content


def deployment_of(client: APIClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/deployments/{NAME}/").json()
    return body


def ready_workers(client: APIClient, count: int, *, version: int, timeout: float) -> list[dict[str, Any]]:
    """Exactly ``count`` ready workers of ``version``, reporting, and no other live one."""

    def poll() -> list[dict[str, Any]] | None:
        variant = deployment_of(client)["variants"][0]
        image = variant.get("image") or {}
        if image.get("status") == "failed":
            pytest.fail(f"the worker image failed to build: {image.get('error') or image.get('log_tail')}")
        live = [w for w in variant["workers"] if w["state"] in ("starting", "ready", "unhealthy", "draining")]
        ready = [w for w in live if w["state"] == "ready" and w["version"] == version and w["last_heartbeat"]]
        return ready if len(ready) == count == len(live) else None

    found: list[dict[str, Any]] = wait_for(
        poll, timeout=timeout, interval=0.5, message=f"{count} ready v{version} workers and no other"
    )
    return found


@contextlib.contextmanager
def explained(cluster: SwarmCluster, instance: str) -> Iterator[None]:
    """A wait that fails says what the rows and the swarm's tasks were."""
    try:
        yield
    except pytest.fail.Exception as exc:
        rows = list(
            Worker.objects.values_list("id", "handle", "slot", "state", "restarts", "node", "last_error")
        )
        services = cluster.manager.services.list(filters={"label": f"kiln.instance={instance}"})
        tasks = [
            (t["ID"], t["Slot"], t["DesiredState"], t["Status"]["State"], t["Status"].get("Err", ""))
            for service in services
            for t in service.tasks()
        ]
        pytest.fail(f"{exc}\nrows: {rows}\ntasks: {tasks}")


def running_tasks(cluster: SwarmCluster, instance: str) -> list[dict[str, Any]]:
    services = cluster.manager.services.list(filters={"label": f"kiln.instance={instance}"})
    return [t for s in services for t in s.tasks() if t["Status"]["State"] == "running"]


def delete_and_wait(client: APIClient) -> None:
    assert client.delete(f"/api/v1/deployments/{NAME}/").status_code == 202
    wait_for(
        lambda: client.get(f"/api/v1/deployments/{NAME}/").status_code == 404,
        timeout=90,
        interval=0.5,
        message="the deployment gone",
    )


def infer_body(seed: int) -> dict[str, Any]:
    batch = np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)
    return {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
        ]
    }


class Load(threading.Thread):
    """Requests in a loop through the gateways in turn, counting answers by version and every failure."""

    def __init__(self, gateways: list[str]) -> None:
        super().__init__(daemon=True)
        self.gateways = gateways
        self.body = infer_body(7)
        self.halt = threading.Event()
        self.versions: dict[str, int] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        turn = 0
        with httpx.Client(timeout=15) as client:
            while not self.halt.is_set():
                url, turn = self.gateways[turn % len(self.gateways)], turn + 1
                try:
                    response = client.post(f"{url}/v2/models/{NAME}/infer", json=self.body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{url}: {type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{url}: {response.status_code} {response.text[:200]}")
                    continue
                served = response.headers.get("X-Kiln-Model-Version", "?")
                self.versions[served] = self.versions.get(served, 0) + 1

    def served(self) -> int:
        return sum(self.versions.values())

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)


@pytest.mark.timeout(360)
def test_four_replicas_spread_over_both_nodes_answer_through_two_gateways_heal_scale_and_leave_nothing(
    swarm_platform: Platform,
    second_gateway: Gateway,
    cluster: SwarmCluster,
    owner: User,
    owner_api: APIClient,
    tmp_path: Path,
) -> None:
    stored_version(owner, tmp_path)
    deploy(owner_api, 1, 4)
    workers = ready_workers(owner_api, 4, version=1, timeout=400)

    manager_node, worker_node = cluster.node_id(cluster.manager), cluster.node_id(cluster.worker)
    by_node = sorted(w["node"].rsplit("/", 1)[-1] for w in workers)
    assert by_node == sorted([manager_node[:12]] * 2 + [worker_node[:12]] * 2)  # spread: two on each node
    assert all(w["http_url"].startswith("http://127.0.0.1:") for w in workers)
    assert len({w["http_url"] for w in workers}) == 4  # free ports, one per task
    image = deployment_of(owner_api)["variants"][0]["image"]
    assert image["tag"].startswith(f"{cluster.registry}/kiln-test-worker/cnn:v1-cpu-")
    instance = swarm_platform.worker.env["KILN_INSTANCE_ID"]
    (service,) = cluster.manager.services.list(filters={"label": f"kiln.instance={instance}"})
    spec = service.attrs["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 4
    assert (spec["UpdateConfig"]["Order"], spec["UpdateConfig"]["FailureAction"]) == (
        "start-first",
        "rollback",
    )
    task = spec["TaskTemplate"]
    assert task["ContainerSpec"]["Image"] == image["tag"]
    assert [cluster.manager.networks.get(n["Target"]).name for n in task["Networks"]] == ["host"]
    assert task["RestartPolicy"]["Condition"] == "any"
    assert task["Resources"]["Limits"]["MemoryBytes"] == 1024**3
    assert task["ContainerSpec"]["Secrets"][0]["File"]["Name"] == "kiln-report-token"
    env = task["ContainerSpec"]["Env"]
    assert not [e for e in env if e.startswith("KILN_WORKER_REPORT_TOKEN=")]  # a secret file, not a variable
    assert "KILN_WORKER_WORKER_ID={{.Task.ID}}" in env

    for gateway in (swarm_platform.gateway, second_gateway):
        for seed in range(4):
            answer = httpx.post(f"{gateway.url}/v2/models/{NAME}/infer", json=infer_body(seed), timeout=15)
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-Kiln-Variant"] == "primary"

    # A task killed on the second node is replaced by the swarm; the platform shows it.
    victim = Worker.objects.get(pk=next(w["id"] for w in workers if worker_node[:12] in w["node"]))
    (container,) = cluster.worker.containers.list(
        filters={"label": f"com.docker.swarm.task.id={victim.handle}"}
    )
    container.kill()
    with explained(cluster, instance):
        replacement = wait_for(
            lambda: Worker.objects.filter(
                variant=victim.variant, slot=victim.slot, state="ready", restarts=1
            ).first(),
            timeout=90,
            message="the swarm's replacement of the killed task, ready",
        )
    victim.refresh_from_db()
    assert victim.state == "stopped"
    assert "exit code 137" in victim.last_error
    assert replacement.node
    assert replacement.handle != victim.handle
    assert "exit code 137" in replacement.last_error
    page = owner_api.get(f"/api/v1/deployments/{NAME}/").json()
    shown = next(w for w in page["variants"][0]["workers"] if w["id"] == replacement.pk)
    assert (shown["restarts"], shown["node"], shown["slot"]) == (1, replacement.node, victim.slot)

    for replicas in (1, 3):
        scaled = owner_api.post(
            f"/api/v1/deployments/{NAME}/variants/primary/scale/", {"replicas": replicas}, format="json"
        )
        assert scaled.status_code == 202
        ready_workers(owner_api, replicas, version=1, timeout=120)
        wait_for(
            lambda n=replicas: len(running_tasks(cluster, instance)) == n,  # type: ignore[misc]
            timeout=60,
            message=f"{replicas} tasks",
        )

    delete_and_wait(owner_api)
    label = f"kiln.instance={instance}"
    wait_for(
        lambda: (
            not cluster.manager.services.list(filters={"label": label})
            and not cluster.containers(label)
            and not cluster.manager.secrets.list(filters={"label": label})
        ),
        timeout=90,
        message="no service, container or secret left on either node",
    )
    assert cluster.manager.api.tasks(filters={"label": label}) == []


@pytest.mark.timeout(180)
def test_draining_a_node_moves_its_replicas_with_no_failed_request_under_load(
    swarm_platform: Platform,
    second_gateway: Gateway,
    cluster: SwarmCluster,
    owner: User,
    owner_api: APIClient,
    tmp_path: Path,
) -> None:
    stored_version(owner, tmp_path)
    deploy(owner_api, 1, 4)
    ready_workers(owner_api, 4, version=1, timeout=240)
    worker_node = cluster.manager.nodes.get(cluster.node_id(cluster.worker))
    manager_id = cluster.node_id(cluster.manager)

    load = Load([swarm_platform.gateway.url, second_gateway.url])
    load.start()
    try:
        wait_for(lambda: load.served() >= 30, timeout=30, message="requests served before the drain")
        worker_node.update({**worker_node.attrs["Spec"], "Availability": "drain"})
        wait_for(
            lambda: (
                (moved := ready_workers(owner_api, 4, version=1, timeout=180))
                and all(manager_id[:12] in w["node"] for w in moved)
            ),
            timeout=200,
            message="the four replicas ready on the remaining node",
        )
        served = load.served()
        wait_for(lambda: load.served() >= served + 30, timeout=30, message="requests served after the drain")
    finally:
        load.stop()
        worker_node.reload()
        worker_node.update({**worker_node.attrs["Spec"], "Availability": "active"})

    assert load.failures == []
    assert load.served() >= 60
    delete_and_wait(owner_api)


@pytest.mark.timeout(240)
def test_a_rolling_update_under_load_fails_no_request_and_a_broken_version_is_rolled_back_by_the_swarm(
    swarm_platform: Platform,
    second_gateway: Gateway,
    cluster: SwarmCluster,
    owner: User,
    owner_api: APIClient,
    tmp_path: Path,
) -> None:
    stored_version(owner, tmp_path, number=1, seed=0)
    stored_version(owner, tmp_path, number=2, seed=1)
    stored_version(owner, tmp_path, number=3, onnx_bytes=b"not an ONNX model: the worker exits at load")
    deploy(owner_api, 1, 2)
    ready_workers(owner_api, 2, version=1, timeout=240)
    instance = swarm_platform.worker.env["KILN_INSTANCE_ID"]

    load = Load([swarm_platform.gateway.url, second_gateway.url])
    load.start()
    try:
        wait_for(lambda: load.versions.get("1", 0) >= 30, timeout=30, message="requests served by v1")
        rolled = owner_api.put(
            f"/api/v1/deployments/{NAME}/variants/primary/version/", {"version": 2}, format="json"
        )
        assert rolled.status_code == 202, rolled.content
        ready_workers(owner_api, 2, version=2, timeout=240)
        wait_for(lambda: load.versions.get("2", 0) >= 30, timeout=30, message="requests served by v2")

        # A version whose workers cannot start: the swarm rolls the update back, v2 keeps serving.
        broken = owner_api.put(
            f"/api/v1/deployments/{NAME}/variants/primary/version/", {"version": 3}, format="json"
        )
        assert broken.status_code == 202, broken.content
        with explained(cluster, instance):
            failed = wait_for(
                lambda: (body := deployment_of(owner_api))["status"] == "failed" and body,
                timeout=150,
                interval=0.5,
                message="the broken update rolled back and shown",
            )
        served = load.versions.get("2", 0)
        wait_for(lambda: load.versions.get("2", 0) >= served + 20, timeout=30, message="v2 still serving")
    finally:
        load.stop()

    assert load.failures == []
    assert load.versions.get("3", 0) == 0
    assert "the swarm rolled the update back" in failed["status_reason"]
    dead = [w for w in failed["variants"][0]["workers"] if w["version"] == 3]
    assert all(w["state"] != "ready" for w in dead)
    (service,) = cluster.manager.services.list(filters={"label": f"kiln.instance={instance}"})
    assert service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Labels"]["kiln.version"] == "2"
    assert service.attrs["Spec"]["Labels"]["kiln.rolled-back-from"]
    wait_for(lambda: len(running_tasks(cluster, instance)) == 2, timeout=60, message="two v2 tasks")
    delete_and_wait(owner_api)


@pytest.mark.timeout(150)
def test_a_constraint_no_node_meets_leaves_the_variant_pending_with_the_reason_until_a_node_qualifies(
    swarm_platform: Platform, cluster: SwarmCluster, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path)
    deploy(owner_api, 1, 2, placement={"constraints": ["node.labels.kiln.gpu==true"]})
    pending = wait_for(
        lambda: "pending" in (body := deployment_of(owner_api))["status_reason"] and body,
        timeout=240,
        interval=0.5,
        message="the variant pending with the swarm's reason",
    )
    assert pending["status"] == "deploying"
    assert pending["status_reason"] == (
        "variant primary: 2 replica(s) pending: "
        "no suitable node (scheduling constraints not satisfied on 2 nodes)"
    )
    assert pending["variants"][0]["placement"] == {
        "constraints": ["node.labels.kiln.gpu==true"],
        "spread": [],
    }
    assert [w["node"] for w in pending["variants"][0]["workers"]] == ["", ""]

    worker_node = cluster.manager.nodes.get(cluster.node_id(cluster.worker))
    spec = worker_node.attrs["Spec"]
    worker_node.update({**spec, "Labels": {**(spec.get("Labels") or {}), "kiln.gpu": "true"}})
    try:
        workers = ready_workers(owner_api, 2, version=1, timeout=120)
        assert all(cluster.node_id(cluster.worker)[:12] in w["node"] for w in workers)
        assert deployment_of(owner_api)["status"] == "serving"
    finally:
        worker_node.reload()
        worker_node.update({**worker_node.attrs["Spec"], "Labels": {}})
    delete_and_wait(owner_api)


def test_the_manager_refuses_a_variant_when_the_engine_is_no_swarm_manager(
    cluster: SwarmCluster, owner: User, owner_api: APIClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments import backends
    from deployments.backends import docker_engine

    monkeypatch.setenv("DOCKER_HOST", cluster.second.url)  # a worker node, not a manager
    monkeypatch.setattr(docker_engine, "_clients", {})
    monkeypatch.setattr(backends, "_BACKENDS", {})
    stored_version(owner, tmp_path)
    response = owner_api.post(
        "/api/v1/deployments/",
        {"name": NAME, "model": "cnn", "variants": [{"version": 1, "backend": "swarm"}]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith(
        f"variants[0].backend: the Docker engine at {cluster.second.url} is not a swarm manager"
    )
