"""The platform as an operator starts it (``bin/kiln-run``), for autoscale_bench.py.

``running_platform`` creates the bench's own PostgreSQL database, starts ``bin/kiln-run`` (``manage.py
runstack`` with bin/kiln-env's embedded defaults) in its own process group with a private
``KILN_VAR_DIR``, free ports and short intervals, makes an API token with ``bin/manage
create_api_token`` and yields a small REST client. On the way out (normal end, error, Ctrl-C) it
stops the process group, then any worker process still marked with this run's instance id, then
drops the database and deletes the run's Redis keys.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
MARKER = "KILN_MANAGED_BY"
"""The process backend's environment marker on every worker it starts (deployments/backends/process.py)."""
IMAGE = (3, 32, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(check: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str) -> Any:
    """``check()``'s first truthy answer, or RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = check()
        except httpx.HTTPError:
            answer = None
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(interval)


@dataclass
class Platform:
    """The running stack: its addresses, an authenticated API client, its log."""

    web_url: str
    gateway_url: str
    api: httpx.Client
    log_path: Path
    environ: dict[str, str]

    def get(self, path: str) -> Any:
        response = self.api.get(path)
        response.raise_for_status()
        return response.json()

    def send(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = self.api.request(method, path, **kwargs)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json()


def log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _psql(*args: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", *args], check=True, capture_output=True
    )


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """SIGTERM to runstack's group (it stops its components and the local workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    with suppress(ProcessLookupError):  # anything of the group that outlived its leader
        os.killpg(proc.pid, signal.SIGKILL)


def _stray_workers(instance: str) -> list[int]:
    """Worker processes this run's platform started (their own sessions) that are still alive."""
    marker = f"{MARKER}={instance}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_strays(instance: str) -> int:
    strays = _stray_workers(instance)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in strays:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while strays and time.monotonic() < deadline:
            strays = _stray_workers(instance)
            time.sleep(0.2)
    return len(_stray_workers(instance))


def platform_environment(
    var_dir: Path, database: str, redis_url: str, intervals: dict[str, float]
) -> dict[str, str]:
    """runstack's environment: private state, free ports, this run's names, short intervals."""
    run = uuid.uuid4().hex[:8]
    web_port, gateway_port = free_port(), free_port()
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "DJANGO_"))},
        "KILN_VAR_DIR": str(var_dir),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
        "REDIS_URL": redis_url,
        "KILN_PORT": str(web_port),
        "KILN_GATEWAY_PORT": str(gateway_port),
        # where workers send reports (its default does not follow KILN_PORT)
        "KILN_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "KILN_GATEWAY_GRPC_PORT": "-1",
        "KILN_INSTANCE_ID": f"asbench-{run}",
        "KILN_CELERY_QUEUE": f"asbench-{run}",
        "KILN_DEFAULT_BACKEND": "process",
        "KILN_ADMIN_PASSWORD": uuid.uuid4().hex,
        "KILN_RUN_TASK_LOG_LEVEL": "warning",
        **{name: f"{value:g}" for name, value in intervals.items()},
    }


@contextmanager
def running_platform(
    database: str, redis_url: str, intervals: dict[str, float], keep_logs: Path | None = None
) -> Iterator[Platform]:
    """``bin/kiln-run`` on a fresh database, until the block ends; everything it started is stopped.

    ``keep_logs``: a directory to copy runstack's log and the workers' logs to before the
    private state is removed."""
    _psql("-c", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    _psql("-c", f'CREATE DATABASE "{database}"')
    with tempfile.TemporaryDirectory(prefix="kiln-asbench-") as tmp:
        var_dir = Path(tmp) / "var"
        env = platform_environment(var_dir, database, redis_url, intervals)
        log_path = Path(tmp) / "runstack.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(ROOT / "bin" / "kiln-run")],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        web_url = f"http://127.0.0.1:{env['KILN_PORT']}"
        try:
            poll(lambda: _web_up(proc, log_path, web_url), timeout=300, what="the platform's web server")
            token = subprocess.run(
                [str(ROOT / "bin" / "manage"), "create_api_token", "admin"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=web_url, headers=headers, timeout=60) as api:
                yield Platform(web_url, f"http://127.0.0.1:{env['KILN_GATEWAY_PORT']}", api, log_path, env)
        except BaseException:
            print(f"--- runstack log (tail)\n{log_tail(log_path)}")
            raise
        finally:
            _stop_group(proc)
            left = _kill_strays(env["KILN_INSTANCE_ID"])
            if left:
                print(f"warning: {left} worker process(es) of {env['KILN_INSTANCE_ID']} would not stop")
            _psql("-c", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            _forget_run(redis_url, env["KILN_INSTANCE_ID"])
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(log_path, keep_logs)
                if (var_dir / "workers").is_dir():
                    shutil.copytree(var_dir / "workers", keep_logs / "workers", dirs_exist_ok=True)


def _forget_run(redis_url: str, name: str) -> None:
    """Delete the run's Redis keys (routing table, stats, windows, Celery bindings: all carry its name)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{name}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _web_up(proc: subprocess.Popen[bytes], log_path: Path, web_url: str) -> bool:
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"bin/kiln-run exited with {proc.returncode}:\n{tail}")
    return httpx.get(f"{web_url}/healthz", timeout=5).status_code == 200


# -- the model and its deployment ---------------------------------------------------------------
def build_cnn(path: Path) -> dict[str, Any]:
    """A small TorchScript CNN (three convolutions, pooling, a linear head) and its signature.

    About 230 MFLOP a request: the worker's time dominates the load client's, so the requests in
    flight at the gateway are close to the number of closed-loop clients."""
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(128, 128, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    ).eval()
    with warnings.catch_warnings():  # torch.jit.script is deprecated in favour of torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return {"inputs": [{"name": "image", "dtype": "float32", "shape": [-1, *IMAGE]}]}


def request_body(seed: int) -> bytes:
    """One v2 JSON request for the CNN (one image)."""
    import numpy as np

    data = np.random.default_rng(seed).standard_normal((1, *IMAGE)).astype(np.float32)
    tensor = {"name": "image", "datatype": "FP32", "shape": [1, *IMAGE], "data": data.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def deploy_cnn(platform: Platform, model: str, deployment: str, *, intra_op_threads: int = 0) -> None:
    """Upload the CNN through the REST API, wait for its conversion, deploy one replica, wait until routed.

    ``intra_op_threads``: ONNX Runtime threads per worker (the variant's option; 0: one per core)."""
    platform.send("POST", "/api/v1/models/", 201, json={"name": model, "description": "autoscale bench"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn.pt"
        signature = build_cnn(path)
        with path.open("rb") as file:
            platform.send(
                "POST",
                f"/api/v1/models/{model}/versions/",
                201,
                files={"file": ("cnn.pt", file)},
                data={"signature": json.dumps(signature)},
            )

    def converted() -> bool:
        status = platform.get(f"/api/v1/models/{model}/versions/1/")["status"]
        if status == "failed":
            raise RuntimeError(f"conversion failed: {platform.get(f'/api/v1/models/{model}/versions/1/')}")
        return bool(status == "ready")

    poll(converted, timeout=600, interval=1, what="the conversion")
    batching = {"intra_op_threads": intra_op_threads}
    variants = [{"version": 1, "replicas": 1, "backend": "process", "batching": batching}]
    platform.send(
        "POST", "/api/v1/deployments/", 201, json={"name": deployment, "model": model, "variants": variants}
    )
    poll(
        lambda: platform.get(f"/api/v1/deployments/{deployment}/")["variants"][0]["ready_replicas"] == 1,
        timeout=300,
        what="the first replica",
    )
    body = request_body(0)
    url = f"{platform.gateway_url}/v2/models/{deployment}/infer"
    headers = {"Content-Type": "application/json"}
    poll(
        lambda: httpx.post(url, content=body, headers=headers, timeout=10).status_code == 200,
        timeout=60,
        what="the gateway to route the deployment",
    )
