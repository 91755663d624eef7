"""A real worker serving in a thread of the test process on free ports, and requests for it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
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
from inference_worker.contracts.batching import MAX_QUEUE_DELAY_MS
from inference_worker.server import Worker
from tests.support.polling import wait_for


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
    wait_for(lambda: (worker.http_port and _ready(handle.url)) or "code" in handle.result)
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


BIG_K = 1600  # the square model (a^16) at this size keeps a core busy for a few hundred ms

LONGEST_DELAY_US = round((MAX_QUEUE_DELAY_MS.high or 0) * 1000)
"""The longest queue delay the option table allows: a batch forms by size, not by time."""


def square_request(k: int, **extra: object) -> tuple[bytes, dict[str, str]]:
    a = (np.eye(k, dtype=np.float32) * 0.5)[None]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [1, k, k],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": a.nbytes},
                }
            ],
            "outputs": [{"name": "p", "parameters": {"binary_data": True}}],
            **extra,
        }
    )
    return header + a.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def post_square(worker: RunningWorker, k: int, **extra: object) -> httpx.Response:
    body, headers = square_request(k, **extra)
    return httpx.post(worker.url + "/v2/models/square/infer", content=body, headers=headers, timeout=60)


def wait_queued(worker: RunningWorker, request: Future[Any]) -> None:
    """Until ``request`` waits in the worker's queue (or has ended: the runner was quicker)."""
    wait_for(lambda: worker.metric("kiln_worker_queue_depth") == 1 or request.done())


def occupy(pool: ThreadPoolExecutor, worker: RunningWorker) -> Future[httpx.Response]:
    """Start a slow request and return once the model runs it (not while its body is still decoded:
    a request sent meanwhile would be queued first and run before it)."""
    future = pool.submit(post_square, worker, BIG_K)
    wait_for(lambda: worker.metric("kiln_worker_running_batches") == 1 or future.done())
    assert not future.done(), "the slow request ended before it was seen running"
    return future
