"""What our components export, read from live scrapes (the ``live_exports`` fixture uses these).

- the platform: the Django app's /metrics through the test client, on the test database;
- a worker: ``python -m inference_worker serve`` on a tiny ONNX model, free ports;
- the gateway, when this tree has one: ``python -m inference_worker gateway`` routing to that
  worker through a routing table the platform published (a primary and a shadow variant),
  after a few requests, so the per-variant and shadow series exist.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.test import override_settings

from deployments.backends.ports import free_port
from tests.support import onnx_models
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.support.promql import exposed_series_names

DEPLOYMENT = "kiln-stack"


@dataclass
class LiveExports:
    """Series names each component exposed; ``missing`` says why a component could not be scraped."""

    names: dict[str, set[str]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def all_names(self) -> set[str]:
        return set().union(*self.names.values())


class Process:
    """A child process with its output in a file, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # signals meant for the test run's process group never reach it
            )

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def until_ok(url: str, process: Process, what: str) -> None:
    def ok() -> bool:
        if process.proc.poll() is not None:
            pytest.fail(f"{what} exited with {process.proc.returncode}:\n{process.log_tail()}")
        response = _get(url)
        return response is not None and response.status_code == 200

    wait_for(ok, timeout=60, interval=0.1, message=f"{what} at {url}")


def infer(url: str) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [0.5] * 8}]}
    return httpx.post(f"{url}/v2/models/{DEPLOYMENT}/infer", json=body, timeout=10)


def start_worker(tmp: Path) -> tuple[Process, str]:
    """``python -m inference_worker serve`` on the tiny MLP as deployment ``kiln-stack``, once ready."""
    model = onnx_models.mlp(tmp / "mlp.onnx")
    port = free_port()
    worker = Process(
        [
            *(sys.executable, "-m", "inference_worker", "serve"),
            *("--model-name", DEPLOYMENT, "--model-path", str(model)),
            *("--http-port", str(port), "--grpc-port", "-1", "--intra-op-threads", "1"),
        ],
        tmp / "worker.log",
        env={k: v for k, v in os.environ.items() if not k.startswith("KILN_WORKER_")},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        until_ok(f"{url}/v2/health/ready", worker, "the worker")
    except BaseException:
        worker.stop()
        raise
    return worker, url


def gateway_available() -> str | None:
    """None when this tree has a gateway to run; otherwise why not."""
    if importlib.util.find_spec("inference_worker.gateway") is None:
        return "this tree has no inference_worker.gateway yet (it is built on the gateway branch)"
    shown = subprocess.run(
        [sys.executable, "-m", "inference_worker", "gateway", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if shown.returncode != 0 or "--routing-key" not in shown.stdout:
        return (
            f"`python -m inference_worker gateway --help` does not offer --routing-key: {shown.stderr[-300:]}"
        )
    return None


def _publish_routing_table(key: str, worker_url: str) -> None:
    """The platform's own routing table for a deployment whose two variants share the live worker."""
    from deployments.models import Deployment, Variant, Worker
    from deployments.services.routing import publish_routing_table
    from registry.models import ModelVersion, RegisteredModel

    with transaction.atomic():
        user = User.objects.create_user(f"stack-{uuid.uuid4().hex[:8]}")
        model = RegisteredModel.objects.create(
            name=f"stack-{uuid.uuid4().hex[:8]}", owner=user, latest_version=1
        )
        version = ModelVersion.objects.create(
            model=model,
            version=1,
            source_format="onnx",
            source_sha256="0" * 64,
            source_size=1,
            source_path="sha256/00/" + "0" * 64,
            status="ready",
            created_by=user,
        )
        deployment = Deployment.objects.create(name=DEPLOYMENT, model=model, created_by=user)
        for name, weight, shadow in (("primary", 100, 0), ("shadow", 0, 100)):
            variant = Variant.objects.create(
                deployment=deployment, name=name, version=version, weight=weight, shadow_percent=shadow
            )
            Worker.objects.create(
                variant=variant, version=version, backend="process", state="ready", http_url=worker_url
            )
        with override_settings(KILN_ROUTING_KEY=key):
            publish_routing_table()
        transaction.set_rollback(True)


def scrape_gateway(tmp: Path, worker_url: str, names: dict[str, set[str]]) -> None:
    key = f"kiln-test-stack-{uuid.uuid4().hex[:12]}:routing"
    _publish_routing_table(key, worker_url)
    port = free_port()
    gateway = Process(
        [
            *(sys.executable, "-m", "inference_worker", "gateway"),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--redis-url", settings.REDIS_URL, "--routing-key", key),
            *("--gateway-id", "kiln-stack-test", "--stats-interval-s", "60"),
        ],
        tmp / "gateway.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        until_ok(f"{url}/metrics", gateway, "the gateway")
        wait_for(lambda: infer(url).status_code == 200, timeout=30, message="an answer through the gateway")
        for _ in range(4):
            assert infer(url).status_code == 200

        def compared() -> str | None:
            text = httpx.get(f"{url}/metrics", timeout=5).text
            return text if "kiln_gateway_shadow_max_abs_diff_bucket" in text else None

        names["gateway"] = exposed_series_names(
            wait_for(compared, timeout=30, message="compared shadow answers")
        )
    finally:
        gateway.stop()
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete(key, f"{key}:stats")


# Series Prometheus makes itself, not a component: scrape health and the state of alerts.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
# Worker series that exist only on a GPU (a CPU worker leaves them out); checked against the source.
GPU_WORKER_SERIES = frozenset(
    {
        "kiln_worker_device_utilization_ratio",
        "kiln_worker_device_memory_used_bytes",
        "kiln_worker_device_memory_total_bytes",
    }
)


def component_of(name: str) -> str:
    if name.startswith("kiln_gateway_"):
        return "gateway"
    if name.startswith("kiln_worker_"):
        return "worker"
    return "platform"


def unexported(names: set[str], exports: LiveExports, *, gateway: bool) -> dict[str, str]:
    """Each queried name that no live scrape showed, with the component that should export it.

    ``gateway`` selects the gateway's names (True) or everyone else's (False).
    """
    missing = {}
    for name in sorted(names - PROMETHEUS_SERIES - GPU_WORKER_SERIES):
        component = component_of(name)
        if (component == "gateway") != gateway:
            continue
        if name not in exports.names.get(component, set()):
            missing[name] = component
    return missing
