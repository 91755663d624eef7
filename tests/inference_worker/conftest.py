"""Real workers on free ports (in a thread of this process), the tiny models, small helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from inference_worker.config import (
    DynamicBatching,
    Limits,
    ModelConfig,
    ReportConfig,
    ServerConfig,
    WorkerConfig,
)
from inference_worker.server import Worker
from tests.inference_worker import onnx_models

MODELS = ("mlp", "two_inputs", "static", "square", "strings", "doubling")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Paths of the tiny ONNX models, built once per session."""
    directory = tmp_path_factory.mktemp("models")
    return SimpleNamespace(
        **{name: getattr(onnx_models, name)(directory / f"{name}.onnx") for name in MODELS}
    )


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class RunningWorker:
    """A worker serving in a background thread with its own uvloop event loop."""

    worker: Worker
    thread: threading.Thread
    result: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.worker.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.worker.grpc_port}"

    def metric(self, name: str, **labels: str) -> float:
        """A sample of /metrics (summed over label values not given)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def make_config(
    model_path: Path,
    name: str = "mlp",
    *,
    batching: DynamicBatching | None = None,
    limits: Limits | None = None,
    report: ReportConfig | None = None,
    **model: Any,
) -> WorkerConfig:
    return WorkerConfig(
        model=ModelConfig(name=name, path=model_path, intra_op_num_threads=1, **model),
        batching=batching or DynamicBatching(),
        limits=limits or Limits(),
        server=ServerConfig(http_port=0, grpc_port=0, drain_timeout_s=20),
        report=report or ReportConfig(),
    )


@contextmanager
def running(config: WorkerConfig) -> Iterator[RunningWorker]:
    """Serve ``config`` until the block ends; waits for readiness first."""
    worker = Worker(config)
    handle = RunningWorker(worker, threading.Thread())

    def serve() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            handle.result["code"] = runner.run(worker.serve(handle_signals=False))

    handle.thread = threading.Thread(target=serve, name="test-worker", daemon=True)
    handle.thread.start()
    wait_until(lambda: (worker.http_port and _ready(handle.url)) or "code" in handle.result)
    assert "code" not in handle.result, f"the worker exited with {handle.result}"
    try:
        yield handle
    finally:
        worker.stop()
        handle.thread.join(30)
        assert not handle.thread.is_alive(), "the worker did not stop"


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def mlp_worker(models: SimpleNamespace) -> Iterator[RunningWorker]:
    """The MLP with default batching, shared by a module's tests."""
    with running(make_config(models.mlp)) as handle:
        yield handle


def v2_body(inputs: dict[str, np.ndarray], **extra: Any) -> dict[str, Any]:
    """A v2 JSON request body with the tensors inline."""
    from inference_worker.tensor_codec import DATATYPES

    def datatype(array: np.ndarray) -> str:
        return next(name for name, dt in DATATYPES.items() if dt.dtype == array.dtype)

    tensors = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype(array),
            "data": array.reshape(-1).tolist(),
        }
        for name, array in inputs.items()
    ]
    return {"inputs": tensors, **extra}
