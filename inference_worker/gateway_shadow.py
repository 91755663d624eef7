"""Shadow traffic: copies of live requests sent to a shadow variant after the client's answer.

``ShadowMirror.offer`` is called once the live answer has been written; it
only puts the copy (references to the request and answer bytes, no copying)
in a bounded queue, or counts it dropped when the queue is full. A few
consumer tasks (``--shadow-concurrency``) send the copies and compare each
shadow answer with the live one: both are decoded here, off the response path
(v2 JSON, the binary tensor extension, or v1 ``predictions``), then per output
the max absolute difference, and for classification-shaped outputs (2-D,
``[batch, classes > 1]``) whether the argmax of each row agrees.

A shadow answer counts as an error when it fails, is not a 200, cannot be
decoded, or does not hold the live answer's outputs with the same shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import orjson

from inference_worker.config import Limits
from inference_worker.errors import WorkerError
from inference_worker.gateway_metrics import GatewayMetrics
from inference_worker.gateway_proxy import UpstreamError, UpstreamResponse
from inference_worker.gateway_routing import Replica, Variant
from inference_worker.tensor_codec import DATATYPES, check_shape, decode_raw, decode_values

log = logging.getLogger("inference_worker.gateway")

_HEADER_LENGTH = re.compile(rb"(?im)^inference-header-content-length:\s*(\d+)\s*$")
_ENCODED = re.compile(rb"(?im)^content-encoding:\s*(?!identity)\S")
_LIMITS = Limits()


@dataclass(slots=True)
class ShadowCopy:
    """One live request and its answer, to be replayed on a shadow variant."""

    deployment: str
    variant: Variant
    method: bytes
    url: bytes
    """Already rewritten for the shadow's model name."""
    headers: bytes
    body: bytes
    live: UpstreamResponse
    live_seconds: float


Send = Callable[[ShadowCopy], Awaitable[tuple[UpstreamResponse | UpstreamError, Replica | None]]]


class ShadowMirror:
    """The bounded queue of copies and the tasks that send and compare them."""

    def __init__(self, *, queue_size: int, concurrency: int, send: Send, metrics: GatewayMetrics) -> None:
        self.queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(queue_size)
        self.concurrency = concurrency
        self.send = send
        self.metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []

    def offer(self, copy: ShadowCopy) -> None:
        """Queue a copy, or count it dropped; never waits."""
        try:
            self.queue.put_nowait(copy)
        except asyncio.QueueFull:
            variant = copy.variant
            self.metrics.series(copy.deployment, variant.name, variant.version).shadow_dropped += 1

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _consume(self) -> None:
        while True:
            copy = await self.queue.get()
            try:
                await self._mirror(copy)
            except Exception:  # a bug here must not stop the consumer
                log.exception("shadow comparison failed")

    async def _mirror(self, copy: ShadowCopy) -> None:
        started = time.perf_counter()
        result, replica = await self.send(copy)
        seconds = time.perf_counter() - started
        variant = copy.variant
        version = replica.version if replica is not None else variant.version
        series = self.metrics.series(copy.deployment, variant.name, version)
        if replica is None:
            series.shadow_errors += 1
            return
        series.shadow_sent += 1
        if isinstance(result, UpstreamError) or result.status != 200:
            series.shadow_errors += 1
            return
        series.shadow_latency.observe(seconds)
        series.shadow_live_latency.observe(copy.live_seconds)
        try:
            comparison = compare(decode_outputs(copy.live), decode_outputs(result))
        except (WorkerError, ValueError, TypeError, KeyError) as exc:
            log.debug("shadow answer of %s/%s not comparable: %s", copy.deployment, variant.name, exc)
            series.shadow_errors += 1
            return
        series.compared(*comparison)


def decode_outputs(response: UpstreamResponse) -> dict[str, np.ndarray]:
    """The output tensors of a v2 (JSON or binary extension) or v1 answer."""
    if _ENCODED.search(response.headers):
        raise ValueError("compressed answers are not compared")
    found = _HEADER_LENGTH.search(response.headers)
    body = memoryview(response.body)
    size = int(found.group(1)) if found else len(body)
    if size > len(body):
        raise ValueError("Inference-Header-Content-Length runs past the body")
    document = orjson.loads(body[:size])
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    if "predictions" in document:
        return {"predictions": np.asarray(document["predictions"], dtype=np.float64)}
    outputs: dict[str, np.ndarray] = {}
    offset = size
    for item in document["outputs"]:
        name = str(item["name"])
        datatype = DATATYPES[item["datatype"]]
        shape, count = check_shape(name, item["shape"], _LIMITS)
        binary = (item.get("parameters") or {}).get("binary_data_size")
        if binary is None:
            outputs[name] = decode_values(name, datatype, shape, count, item["data"])
        else:
            outputs[name] = decode_raw(name, datatype, shape, count, body[offset : offset + int(binary)])
            offset += int(binary)
    return outputs


def compare(live: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> tuple[dict[str, float], int, int]:
    """Per numeric output the max abs difference; argmax rows compared and equal.

    Raises ``ValueError`` when the shadow lacks an output or its shape differs,
    or a difference is not finite.
    """
    diffs: dict[str, float] = {}
    rows = equal = 0
    for name, expected in live.items():
        got = shadow.get(name)
        if got is None or got.shape != expected.shape:
            shape = None if got is None else list(got.shape)
            raise ValueError(f"output {name!r}: shadow shape {shape} != live {list(expected.shape)}")
        if expected.dtype.kind not in "biuf":
            continue  # strings: nothing numeric to compare
        a, b = expected.astype(np.float64), got.astype(np.float64)
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if not np.isfinite(diff):
            raise ValueError(f"output {name!r}: the difference is not finite")
        diffs[name] = diff
        if a.ndim == 2 and a.shape[1] > 1:
            rows += a.shape[0]
            equal += int(np.count_nonzero(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    return diffs, rows, equal
