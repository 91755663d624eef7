"""Deployments on the docker backend against a real engine: images built by the platform, containers
serving over HTTP and gRPC, reports, healing, a rolling update without a failed request, reuse, clean-up.

The engine is the one at ``DOCKER_HOST`` (``bash .ci/setup.d/docker.sh`` starts one and builds the
local Python base image); without one these tests skip. One real image build happens per session
(the first test); the other tests find that image on the engine and reuse it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from accounts.tokens import create_api_token
from deployments.models import Report, Worker, WorkerImage
from registry import storage
from tests.support.deployments import infer
from tests.support.polling import wait_for
from tests.support.services import CeleryWorker, Platform
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True)]

BASE_IMAGE = os.environ.get("KILN_DOCKER_BASE_IMAGE", "kiln/python-base:bookworm")
TEST_REPOSITORY = "kiln-test-worker"
TEST_NETWORK = "kiln-test-bridge"
INSTANCE_PREFIX = f"kiln-test-{os.getpid()}-"
NAME = "cnn-docker"


def _test_images(client: docker.DockerClient) -> list[Any]:
    return list(client.images.list(filters={"reference": f"{TEST_REPOSITORY}/*"}))


def _our_containers(client: docker.DockerClient) -> list[Any]:
    """Containers started by this test session's platforms (running or not).

    Listed sparse, then read one by one: the reconcile loop removes containers while we look,
    and a full listing fails on one that went between the list and its inspection.
    """
    found = []
    for sparse in client.containers.list(all=True, sparse=True, filters={"label": "kiln.instance"}):
        if not (sparse.attrs.get("Labels") or {}).get("kiln.instance", "").startswith(INSTANCE_PREFIX):
            continue
        try:
            found.append(client.containers.get(sparse.id))
        except docker.errors.NotFound:
            continue  # removed since the listing
    return found


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """The engine, with the local base image; earlier sessions' test images are removed first."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        pytest.skip(f"no Docker engine answers at {where} ({exc}); run: bash .ci/setup.d/docker.sh")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"the base image {BASE_IMAGE} is missing; run: bash .ci/setup.d/docker.sh")
    for image in _test_images(client):
        client.images.remove(image.id, force=True)
    yield client
    for image in _test_images(client):
        client.images.remove(image.id, force=True)
    for network in client.networks.list(names=[TEST_NETWORK]):
        network.remove()
    client.close()


@pytest.fixture
def docker_settings(
    docker_engine: docker.DockerClient, celery_worker: CeleryWorker, settings: Any
) -> Iterator[None]:
    """Docker settings for this process and the Celery worker; containers left by the test are removed."""
    values = {
        "KILN_DOCKER_BASE_IMAGE": BASE_IMAGE,
        "KILN_DOCKER_IMAGE_REPOSITORY": TEST_REPOSITORY,
        "KILN_DOCKER_NETWORK": "host",
        "KILN_DOCKER_MEMORY_LIMIT": "1g",
        # The wheelhouse outlives the test's var dir, so later sessions start from it.
        "KILN_WHEELHOUSE_DIR": str(django_settings.KILN_WHEELHOUSE_DIR),
    }
    for key, value in values.items():
        setattr(settings, key, value)
    celery_worker.env.update(values)
    yield
    for container in _our_containers(docker_engine):
        container.remove(force=True)


@pytest.fixture
def bridge_network(
    docker_engine: docker.DockerClient, docker_settings: None, celery_worker: CeleryWorker, settings: Any
) -> str:
    """A user-defined bridge network for the workers (our engines run without the default bridge)."""
    if not docker_engine.networks.list(names=[TEST_NETWORK]):
        docker_engine.networks.create(TEST_NETWORK, driver="bridge")
    settings.KILN_DOCKER_NETWORK = TEST_NETWORK
    celery_worker.env["KILN_DOCKER_NETWORK"] = TEST_NETWORK
    return TEST_NETWORK


@pytest.fixture
def docker_platform(docker_settings: None, platform: Platform) -> Platform:
    return platform


def variant_of(client: APIClient, name: str = NAME) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/deployments/{name}/").json()["variants"][0]
    return body


def ready_workers(client: APIClient, count: int, *, version: int, timeout: float) -> list[dict[str, Any]]:
    def poll() -> list[dict[str, Any]] | None:
        variant = variant_of(client)
        image = variant.get("image") or {}
        if image.get("status") == "failed":
            pytest.fail(f"the worker image failed to build: {image.get('error') or image.get('log_tail')}")
        workers = [w for w in variant["workers"] if w["state"] == "ready"]
        fresh = len(workers) == count and all(
            w["version"] == version and w["last_heartbeat"] for w in workers
        )
        return workers if fresh else None

    found: list[dict[str, Any]] = wait_for(
        poll, timeout=timeout, interval=0.5, message=f"{count} ready v{version} containers"
    )
    return found


def delete_and_wait(client: APIClient) -> None:
    """Delete the deployment: accepted at once (202), gone once the reconcile loop stopped its workers."""
    deleted = client.delete(f"/api/v1/deployments/{NAME}/")
    assert deleted.status_code == 202, deleted.content
    wait_for(
        lambda: client.get(f"/api/v1/deployments/{NAME}/").status_code == 404,
        timeout=60,
        interval=0.3,
        message="the deployment gone",
    )


def deploy(client: APIClient, version: int, replicas: int = 2) -> None:
    created = client.post(
        "/api/v1/deployments/",
        {
            "name": NAME,
            "model": "cnn",
            "variants": [{"version": version, "replicas": replicas, "backend": "docker"}],
        },
        format="json",
    )
    assert created.status_code == 201, created.content


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_version_is_built_into_an_image_whose_containers_serve_http_and_grpc_report_and_heal(
    docker_platform: Platform,
    docker_engine: docker.DockerClient,
    owner: User,
    owner_api: APIClient,
    web_as: Any,
    tmp_path: Path,
) -> None:
    version = stored_version(owner, tmp_path)
    deploy(owner_api, 1)

    building = wait_for(
        lambda: (
            (image := variant_of(owner_api)["image"])["status"] == "building"
            and image["progress"] > 0
            and image
        ),
        timeout=120,
        message="the image build in progress in the API",
    )
    assert building["tag"].startswith(f"{TEST_REPOSITORY}/cnn:v1-cpu-")
    assert building["in_use"] is None
    waiting = wait_for(  # the reconcile loop's next pass writes why the deployment waits
        lambda: (body := owner_api.get(f"/api/v1/deployments/{NAME}/").json())["status_reason"] and body,
        timeout=60,
        message="the deployment to say why it waits",
    )
    assert waiting["variants"][0]["workers"] == []  # no container before its image is ready
    assert (waiting["status"], waiting["status_reason"]) == (
        "deploying",
        f"variant primary: building the worker image {building['tag']}",
    )
    workers = ready_workers(owner_api, 2, version=1, timeout=420)

    image = variant_of(owner_api)["image"]
    assert (image["status"], image["progress"], image["reused"], image["in_use"]) == (
        "ready",
        100,
        False,
        image["tag"],
    )
    assert any("Successfully tagged" in line for line in image["log_tail"])
    row = WorkerImage.objects.get()
    assert "wheelhouse" in row.log
    assert "pip install --no-index" in row.log
    engine_image = docker_engine.images.get(image["tag"])
    assert engine_image.labels["kiln.model.sha256"] == version.onnx_sha256
    assert engine_image.labels["kiln.model.version"] == "1"
    assert engine_image.labels["kiln.worker.code"] == row.worker_code_hash
    assert engine_image.attrs["Config"]["User"] == "10001:10001"
    assert engine_image.attrs["Config"]["Healthcheck"]["Test"][1:3] == ["python3", "-c"]
    page = web_as(owner).get(f"/deployments/{NAME}/live/").content.decode()
    assert image["tag"] in page
    assert "Build log" in page
    assert "Successfully tagged" in page

    containers = {c.id: c for c in _our_containers(docker_engine)}
    handles = {Worker.objects.get(pk=w["id"]).handle for w in workers}
    assert set(containers) == handles
    for container in containers.values():
        assert container.status == "running"
        assert container.image.id == engine_image.id
        assert (container.labels["kiln.deployment"], container.labels["kiln.version"]) == (NAME, "1")
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["HostConfig"]["Memory"] == 1024**3

    batch = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(storage.resolve(version.onnx_path))).run(None, {"image": batch})[0]
    for worker in workers:
        np.testing.assert_allclose(infer(worker["http_url"], NAME, batch), expected, rtol=1e-5, atol=1e-5)
        grpc_client = triton_grpc.InferenceServerClient(worker["grpc_target"])
        tensor = triton_grpc.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = grpc_client.infer(NAME, [tensor])
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
        grpc_client.close()
    assert owner_api.get(f"/api/v1/deployments/{NAME}/").json()["status"] == "serving"
    wait_for(
        lambda: all(Report.objects.filter(worker_id=w["id"]).exists() for w in workers),
        timeout=20,
        message="reports from both containers",
    )

    # A container killed behind the platform's back is replaced; the dead one is removed.
    victim = Worker.objects.get(pk=workers[0]["id"])
    docker_engine.containers.get(victim.handle).kill()
    replacement = wait_for(
        lambda: Worker.objects.filter(variant=victim.variant, state="ready", restarts=1).first(),
        timeout=30,
        message="a replacement container",
    )
    stopped = Worker.objects.get(pk=victim.pk)
    assert stopped.state == "stopped"
    assert "exited with code 137" in stopped.last_error
    assert {c.id for c in _our_containers(docker_engine)} == {
        Worker.objects.get(pk=workers[1]["id"]).handle,
        replacement.handle,
    }
    logs = owner_api.get(f"/api/v1/deployments/{NAME}/workers/{victim.pk}/logs/").json()["lines"]
    assert any("ready: model" in line for line in logs)
    np.testing.assert_allclose(infer(replacement.http_url, NAME, batch), expected, rtol=1e-5, atol=1e-5)

    # An image removed from the engine behind the platform's back is built again when a replica needs it.
    docker_engine.images.remove(image["tag"], force=True)
    scaled = owner_api.post(
        f"/api/v1/deployments/{NAME}/variants/primary/scale/", {"replicas": 3}, format="json"
    )
    assert scaled.status_code == 202
    ready_workers(owner_api, 3, version=1, timeout=240)
    assert docker_engine.images.get(image["tag"]).labels["kiln.model.sha256"] == version.onnx_sha256
    refused = Worker.objects.get(state="stopped", last_error__contains="is not on the engine")
    assert refused.handle == ""
    assert WorkerImage.objects.get().status == "ready"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_on_a_bridge_network_the_engine_publishes_the_ports_and_reports_go_to_the_engines_host(
    bridge_network: str,
    docker_platform: Platform,
    docker_engine: docker.DockerClient,
    owner: User,
    owner_api: APIClient,
    tmp_path: Path,
) -> None:
    version = stored_version(owner, tmp_path)
    deploy(owner_api, 1, replicas=1)

    (worker,) = ready_workers(owner_api, 1, version=1, timeout=420)

    (container,) = _our_containers(docker_engine)
    gateway = docker_engine.networks.get(bridge_network).attrs["IPAM"]["Config"][0]["Gateway"]
    published = container.attrs["NetworkSettings"]["Ports"]
    assert container.attrs["HostConfig"]["NetworkMode"] == bridge_network
    assert worker["http_url"] == f"http://127.0.0.1:{published['8080/tcp'][0]['HostPort']}"
    assert worker["grpc_target"] == f"127.0.0.1:{published['8081/tcp'][0]['HostPort']}"
    args = container.attrs["Args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    port = docker_platform.url.rsplit(":", 1)[1]
    assert args[args.index("--report-url") + 1] == (
        f"http://host.docker.internal:{port}/api/v1/workers/{worker['id']}/reports/"
    )
    assert container.attrs["HostConfig"]["ExtraHosts"] == [f"host.docker.internal:{gateway}"]
    batch = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(storage.resolve(version.onnx_path))).run(None, {"image": batch})[0]
    np.testing.assert_allclose(infer(worker["http_url"], NAME, batch), expected, rtol=1e-5, atol=1e-5)
    grpc_client = triton_grpc.InferenceServerClient(worker["grpc_target"])
    assert grpc_client.is_model_ready(NAME)
    grpc_client.close()

    delete_and_wait(owner_api)
    assert _our_containers(docker_engine) == []


class Client(threading.Thread):
    """Loops inference requests against the ready replicas, reading their URLs fresh from the API."""

    def __init__(self, base_url: str, token: str, batch: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.api = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(batch.shape),
                    "data": batch.ravel().tolist(),
                }
            ]
        }
        self.halt = threading.Event()
        self.versions: dict[str, int] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        turn = 0
        while not self.halt.is_set():
            try:
                variant = self.api.get(f"/api/v1/deployments/{NAME}/").json()["variants"][0]
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                self.failures.append(f"reading the deployment: {type(exc).__name__}: {exc}")
                continue
            urls = [w["http_url"] for w in variant["workers"] if w["state"] == "ready"]
            if not urls:
                self.failures.append("no ready replica listed")
                self.halt.wait(0.2)
                continue
            url, turn = urls[turn % len(urls)], turn + 1
            try:
                response = httpx.post(f"{url}/v2/models/{NAME}/infer", json=self.body, timeout=10)
            except httpx.HTTPError as exc:
                self.failures.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            if response.status_code != 200:
                self.failures.append(f"{url}: {response.status_code} {response.text[:200]}")
                continue
            served = response.json()["model_version"]
            self.versions[served] = self.versions.get(served, 0) + 1

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        self.api.close()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_rolling_update_fails_no_request_a_redeploy_reuses_the_image_and_a_stop_leaves_no_container(
    docker_platform: Platform,
    docker_engine: docker.DockerClient,
    owner: User,
    owner_api: APIClient,
    tmp_path: Path,
) -> None:
    stored_version(owner, tmp_path, number=1, seed=0)
    stored_version(owner, tmp_path, number=2, seed=1)
    deploy(owner_api, 1)
    ready_workers(owner_api, 2, version=1, timeout=420)
    batch = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)

    client = Client(docker_platform.url, create_api_token(user=owner), batch)
    client.start()
    try:
        wait_for(lambda: client.versions.get("1", 0) >= 20, timeout=30, message="requests served by v1")
        rolled = owner_api.put(
            f"/api/v1/deployments/{NAME}/variants/primary/version/", {"version": 2}, format="json"
        )
        assert rolled.status_code == 202, rolled.content
        new = ready_workers(owner_api, 2, version=2, timeout=300)
        wait_for(
            lambda: len(_our_containers(docker_engine)) == 2, timeout=60, message="old containers removed"
        )
        wait_for(lambda: client.versions.get("2", 0) >= 20, timeout=30, message="requests served by v2")
    finally:
        client.stop()

    assert client.failures == []
    assert client.versions["1"] >= 20
    assert client.versions["2"] >= 20
    v2_image = WorkerImage.objects.get(version__version=2)
    assert {c.image.id for c in _our_containers(docker_engine)} == {v2_image.image_id}
    assert {c.id for c in _our_containers(docker_engine)} == {
        Worker.objects.get(pk=w["id"]).handle for w in new
    }

    # Deleting and deploying v2 again reuses its image: no second row, no second build.
    delete_and_wait(owner_api)
    assert _our_containers(docker_engine) == []
    deploy(owner_api, 2)
    ready_workers(owner_api, 2, version=2, timeout=60)
    again = WorkerImage.objects.get(version__version=2)
    assert (again.pk, again.image_id, again.finished_at) == (
        v2_image.pk,
        v2_image.image_id,
        v2_image.finished_at,
    )
    assert variant_of(owner_api)["image"]["in_use"] == v2_image.tag

    # Stop: every container drains and is removed.
    assert owner_api.post(f"/api/v1/deployments/{NAME}/stop/").status_code == 202
    wait_for(
        lambda: owner_api.get(f"/api/v1/deployments/{NAME}/").json()["status"] == "stopped",
        timeout=60,
        message="the deployment stopped",
    )
    assert _our_containers(docker_engine) == []

    # v1 serves nowhere now: deleting it takes its image off the engine (a Celery job after the commit).
    v1_tag = WorkerImage.objects.get(version__version=1).tag
    assert owner_api.delete("/api/v1/models/cnn/versions/1/").status_code == 204
    wait_for(  # one engine call: images.list() inspects each image it listed, which may be going
        lambda: not docker_engine.api.images(name=v1_tag, quiet=True),
        timeout=60,
        message="v1's image removed from the engine",
    )
    assert docker_engine.images.list(filters={"reference": v2_image.tag})


@pytest.mark.docker
def test_a_gpu_variant_is_refused_with_a_clear_message_where_the_engine_has_no_gpu_runtime(
    docker_engine: docker.DockerClient, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    if "nvidia" in (docker_engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has an NVIDIA runtime")
    stored_version(owner, tmp_path)

    response = owner_api.post(
        "/api/v1/deployments/",
        {"name": NAME, "model": "cnn", "variants": [{"version": 1, "device": "cuda:0", "backend": "docker"}]},
        format="json",
    )

    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith("variants[0].device: GPU ids [0] were asked for")
    assert "no NVIDIA runtime" in message
    assert "use device cpu" in message
    assert not WorkerImage.objects.exists()


def test_a_docker_variant_is_refused_with_a_clear_message_when_no_engine_answers(
    owner: User, owner_api: APIClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments import backends
    from deployments.backends import docker_engine

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setattr(backends, "_BACKENDS", {})
    monkeypatch.setattr(docker_engine, "_clients", {})
    stored_version(owner, tmp_path)

    response = owner_api.post(
        "/api/v1/deployments/",
        {"name": NAME, "model": "cnn", "variants": [{"version": 1, "backend": "docker"}]},
        format="json",
    )

    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith(
        f"variants[0].backend: no Docker engine answers at unix://{tmp_path}/no-engine.sock"
    )
    assert "DOCKER_HOST" in message


@pytest.mark.docker
def test_the_backend_finds_its_own_containers_and_stopping_one_keeps_its_logs_and_removes_it(
    docker_engine: docker.DockerClient, settings: Any, tmp_path: Path
) -> None:
    from deployments.backends.docker import DockerBackend

    settings.KILN_INSTANCE_ID = f"{INSTANCE_PREFIX}{time.monotonic_ns()}"
    settings.VAR_DIR = tmp_path
    ours = docker_engine.containers.run(
        BASE_IMAGE,
        ["python3", "-c", "import time; print('serving', flush=True); time.sleep(600)"],
        detach=True,
        network_mode="none",
        labels={"kiln.instance": settings.KILN_INSTANCE_ID, "kiln.worker": "41"},
    )
    other = docker_engine.containers.run(
        BASE_IMAGE,
        ["sleep", "600"],
        detach=True,
        network_mode="none",
        labels={"kiln.instance": "another-platform"},
    )
    try:
        backend = DockerBackend()
        wait_for(lambda: "serving" in backend.logs(ours.id, log_path="", tail=5), timeout=20)

        found = backend.managed_handles(min_age_s=0)
        too_young = backend.managed_handles(min_age_s=3600)
        backend.stop(ours.id, grace_s=1)

        assert found == [ours.id]
        assert too_young == []
        assert backend.status(ours.id).running is False
        assert backend.status(ours.id).detail == "the container is gone"
        saved = (tmp_path / "workers" / "worker-41.log").read_text()
        assert saved.startswith("serving\n")
        assert "ended with code 137" in saved  # PID 1 without a SIGTERM handler ignores it: killed after 1 s
        assert backend.logs(ours.id, log_path=str(tmp_path / "workers" / "worker-41.log"), tail=5).startswith(
            "serving"
        )
    finally:
        for container in (ours, other):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
