"""Real processes for the gateway's tests: workers, the gateway, Redis tables, a keep-alive client.

Workers and the gateway run as ``python -m inference_worker serve|gateway`` on
port 0; the port is read from the line each logs when it listens. Routing
tables go to Redis db 15 under a key unique to the test.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import redis
from onnx import TensorProto, helper, numpy_helper

from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/15"
_LISTENING = re.compile(r"listening http=[^:\s]+:(\d+)(?: grpc=[^:\s]+:(-?\d+))?")


def classifier(path: Path, seed: int) -> Path:
    """x FP32 [batch, 4] -> y FP32 [batch, 3]: a two-layer MLP with weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((4, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def infer_body(rows: int = 1, seed: int | None = None) -> bytes:
    x = np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)
    tensor = {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": x.reshape(-1).tolist()}
    return orjson.dumps({"inputs": [tensor]})


@dataclass
class Process:
    """A child process whose stderr is collected by a thread; ``port`` from its 'listening' line."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    port: int = 0
    grpc_port: int = -1
    listening: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc(self) -> str:
        """``host:port`` of its gRPC server."""
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return "".join(self.lines[-40:])

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


def _read(process: Process) -> None:
    assert process.popen.stderr is not None
    with process.popen.stderr:
        for line in process.popen.stderr:
            process.lines.append(line)
            found = _LISTENING.search(line)
            if found and not process.listening.is_set():
                process.port = int(found.group(1))
                process.grpc_port = int(found.group(2) or -1)
                process.listening.set()
    process.listening.set()


def start(args: Sequence[str], env: dict[str, str] | None = None, nice: int = 0) -> Process:
    """``python -m inference_worker <args>``, once it listens (``nice``: its CPU priority, 0-19).

    A gateway without ``--grpc-port`` gets any free one: its default (8101) would collide with
    another gateway of this or a concurrent test run."""
    if args and args[0] == "gateway" and "--grpc-port" not in args:
        args = [*args, "--grpc-port", "0"]
    popen = subprocess.Popen(
        ["nice", "-n", str(nice), sys.executable, "-m", "inference_worker", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    process = Process(popen)
    threading.Thread(target=_read, args=(process,), daemon=True).start()
    if not process.listening.wait(60) or not process.port:
        process.kill()
        raise AssertionError(f"{args[0]} did not start:\n{process.log()}")
    return process


@contextmanager
def worker(
    model: Path, name: str = "clf", version: str = "1", nice: int = 0, *, grpc: bool = False
) -> Iterator[Process]:
    """A real worker serving ``model`` as ``name`` (one ONNX Runtime thread; gRPC on a free port if asked)."""
    args = ["serve", "--model-name", name, "--model-version", version, "--model-path", str(model)]
    grpc_port = "0" if grpc else "-1"
    process = start(
        [*args, "--http-port", "0", "--grpc-port", grpc_port, "--intra-op-threads", "1"], nice=nice
    )
    try:
        wait_for(lambda: get(process.url, "/v2/health/ready")[0] == 200, timeout=60)
        yield process
    finally:
        process.stop()


@contextmanager
def gateway(key: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[Process]:
    """A real gateway following routing key ``key`` in Redis db 15 (HTTP and gRPC on free ports)."""
    args = ["gateway", "--port", "0", "--grpc-port", "0", "--redis-url", REDIS_URL, "--routing-key", key]
    process = start([*args, "--reload-interval-s", "0.5", "--stats-interval-s", "0.2", *extra], env)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


@contextmanager
def routing_key() -> Iterator[tuple[str, redis.Redis]]:
    """A fresh key in Redis db 15, deleted (with its stats hash) afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    key = f"kiln-test:{uuid.uuid4().hex}:routing"
    try:
        yield key, client
    finally:
        client.delete(key, f"{key}:stats")
        client.close()


Arm = tuple[str, float, float, Sequence[Process | str]]
"""(variant name, weight, shadow percent, replicas: workers or URLs)."""


def table(
    version: int,
    deployments: Mapping[str, Sequence[Arm]],
    model_name: str = "clf",
    versions: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A routing table in the platform's format (``deployments/services/routing.py``)."""
    out: dict[str, Any] = {}
    for deployment, arms in deployments.items():
        variants = []
        for name, weight, shadow, replicas in arms:
            urls = [r if isinstance(r, str) else r.url for r in replicas]
            targets = ["" if isinstance(r, str) or r.grpc_port < 0 else r.grpc for r in replicas]
            served = (versions or {}).get(name, 1)
            variants.append(
                {
                    "name": name,
                    "model_name": model_name,
                    "version": served,
                    "weight": weight,
                    "shadow_percent": shadow,
                    "replicas": [
                        {"id": i, "url": u, "grpc": g, "version": served}
                        for i, (u, g) in enumerate(zip(urls, targets, strict=True))
                    ],
                }
            )
        out[deployment] = {"model": "clf-model", "variants": variants}
    return {"version": version, "generated_at": "2026-01-01T00:00:00+00:00", "deployments": out}


def publish(client: redis.Redis, key: str, payload: dict[str, Any], *, announce: bool = True) -> None:
    client.set(key, orjson.dumps(payload))
    if announce:
        client.publish(key, str(payload["version"]))


def applied(gateway_url: str, version: int, timeout: float = 10.0) -> None:
    """Wait until the gateway serves table ``version``."""

    def check() -> bool:
        status, _, body = get(gateway_url, "/v2/health/ready")
        return status == 200 and orjson.loads(body).get("routing_table_version") == version

    wait_for(check, timeout=timeout)


def get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except OSError:
        return 0, {}, b""
    finally:
        connection.close()


class Client:
    """One keep-alive HTTP/1.1 connection (http.client: cheap per request, unlike httpx)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        self.connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = self.connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def infer(
        self, deployment: str, body: bytes, key: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return self.post(f"/v2/models/{deployment}/infer", body, {"X-Routing-Key": key} if key else None)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metric(gateway_url: str, name: str, **labels: str) -> float:
    """A sample of the gateway's /metrics, summed over label values not given."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(get(gateway_url, "/metrics")[2].decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
