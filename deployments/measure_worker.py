"""One configuration of a serving-advice measurement: the real worker started, driven, stopped. No ORM.

The worker is the process backend's (``ProcessBackend.spawn``: the same command line, environment
and handle as a deployment's worker, its log under ``<var>/workers/measure-<run>.log``) on
127.0.0.1, serving the version with one batching configuration. Each cell is a closed-loop load
(``deployments.loadgen``) over one protocol at one concurrency; the worker's own request counter
is read before and after it, so every row says what the worker itself counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deployments.backends.base import WorkerSpec
from deployments.backends.process import ProcessBackend
from deployments.errors import MeasurementError
from deployments.loadgen import Cell, Target, http_request, measure, sample_bodies
from deployments.services.batching import PROTOCOLS
from inference_worker.contracts.warmup import WarmupInputs

REQUESTS_COUNTER = "kiln_worker_requests_total"
"""The worker's count of answered requests (``inference_worker.metrics``), by protocol and outcome."""
LOG_LINES = 12

Beat = Callable[[str], None]
"""Told what the run does now (and that it is alive); called between steps."""


@dataclass(frozen=True)
class Load:
    """How to load each configuration: protocols, concurrencies, window and warm-up."""

    protocols: tuple[str, ...]
    concurrencies: tuple[int, ...]
    seconds: float
    warmup_s: float

    @property
    def cells(self) -> int:
        return len(self.protocols) * len(self.concurrencies)


@dataclass(frozen=True)
class Measured:
    """One cell's result and how much the worker's own counter grew over it."""

    protocol: str
    cell: Cell
    worker_requests: int


@dataclass(frozen=True)
class RunningWorker:
    url: str
    model: str
    handle: str


@contextmanager
def started_worker(
    spec: WorkerSpec,
    *,
    log_name: str,
    start_timeout_s: float,
    on_start: Callable[[str], None],
    beat: Beat,
) -> Iterator[RunningWorker]:
    """The worker of ``spec`` until the block ends, once it is ready (``MeasurementError`` if never).

    ``on_start(handle)`` records the process as soon as it exists (and ``""`` once it stopped).
    """
    backend = ProcessBackend()
    handle = backend.spawn(spec, log_name=log_name)
    on_start(handle.handle)
    try:
        deadline = time.monotonic() + start_timeout_s
        next_beat = time.monotonic() + 5
        while not backend.probe_ready(handle.handle, http_url=handle.http_url):
            if not backend.status(handle.handle).running:
                tail = backend.logs(handle.handle, log_path=handle.log_path, tail=LOG_LINES).strip()
                raise MeasurementError(f"the worker exited before it was ready: {tail or 'no output'}")
            if time.monotonic() > deadline:
                raise MeasurementError(f"the worker was not ready within {start_timeout_s:g} s")
            if time.monotonic() > next_beat:
                beat("waiting for the worker to be ready")
                next_beat = time.monotonic() + 5
            time.sleep(0.1)
        yield RunningWorker(handle.http_url, spec.launch.model_name, handle.handle)
    finally:
        backend.stop(handle.handle, grace_s=5)
        on_start("")


def served(url: str) -> int:
    """The worker's count of HTTP requests answered so far, every outcome."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == REQUESTS_COUNTER and sample.labels.get("protocol") == "http"
        )
    )


def measure_configuration(
    worker: RunningWorker, load: Load, warmup: WarmupInputs | None, beat: Beat
) -> list[Measured]:
    """Every cell of ``load`` against ``worker``; a sample request each protocol must answer with 200."""
    metadata = httpx.get(f"{worker.url}/v2/models/{worker.model}", timeout=10).json()
    bodies = sample_bodies(metadata, warmup)
    parts = urlsplit(worker.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v2/models/{worker.model}/infer"
    results: list[Measured] = []
    for protocol in load.protocols:
        body, headers = bodies[protocol]
        answer = httpx.post(f"{worker.url}{path}", content=body, headers=headers, timeout=60)
        if answer.status_code != 200:
            raise MeasurementError(
                f"the worker refused the sample request over {PROTOCOLS[protocol]}: "
                f"{answer.status_code} {answer.text[:300]}"
            )
        target = Target(host, port, http_request(host, port, path, body, headers))
        for concurrency in load.concurrencies:
            beat(f"{PROTOCOLS[protocol]} at concurrency {concurrency}")
            before = served(worker.url)
            cell = measure(target, concurrency=concurrency, seconds=load.seconds, warmup_s=load.warmup_s)
            results.append(Measured(protocol, cell, served(worker.url) - before))
    return results
