"""A closed-loop HTTP/1.1 load generator for the serving advice's measurements. No Django.

``concurrency`` keep-alive connections each send one pre-built request, wait for the whole
answer, and send the next at once (a closed loop, as wrk does). Requests are bytes built once
and answers are framed by ``Content-Length`` only, in asyncio protocol callbacks (uvloop when
installed), so the client costs a few microseconds a request and the worker, not the client,
is what gets measured. Answers that complete in the window after the warm-up count; their
latency is send-to-last-byte. Anything but a 200 counts as an error, and so does a connection
the server closed (it is opened again).

``sample_bodies`` builds one request of batch 1 per protocol (``http_json``, and the binary
tensor extension as ``http_binary``) from the model's metadata as the worker answers it
(``GET /v2/models/{name}``) and the shapes the conversion validated (``contracts.warmup``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson

from inference_worker.contracts.warmup import WarmupInputs
from inference_worker.tensor_codec import DATATYPES, json_data, raw_bytes

LOAD_PROTOCOLS = ("http_json", "http_binary")
"""The protocols a measurement drives (the advice's names, ``deployments.services.batching.PROTOCOLS``)."""
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Cell:
    """What one closed-loop run measured inside its window."""

    concurrency: int
    seconds: float
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Target:
    """Where to send, and the request's bytes (head and body)."""

    host: str
    port: int
    request: bytes


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """An HTTP/1.1 keep-alive POST as bytes on the wire."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _shape(meta: dict[str, Any], warmup: WarmupInputs | None) -> list[int]:
    shape = [int(d) for d in meta["shape"]]
    known = warmup.shapes.get(meta["name"]) if warmup is not None else None
    if known is not None and len(known) == len(shape):
        shape = [d if d >= 0 else (k if k > 0 else 1) for d, k in zip(shape, known, strict=True)]
    shape = [d if d >= 0 else 1 for d in shape]
    if meta["shape"] and int(meta["shape"][0]) < 0:
        shape[0] = 1  # one sample per request, as online clients send
    return shape


def sample_inputs(metadata: dict[str, Any], warmup: WarmupInputs | None) -> dict[str, np.ndarray]:
    """Random inputs of batch 1 for the model the worker describes in ``metadata``."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for meta in metadata["inputs"]:
        shape, dtype = _shape(meta, warmup), DATATYPES[meta["datatype"]].dtype
        if dtype.kind == "O":
            feeds[meta["name"]] = np.full(shape, b"x", dtype=object)
        elif dtype.kind == "b":
            feeds[meta["name"]] = rng.random(shape) < 0.5
        elif dtype.kind == "f":
            feeds[meta["name"]] = rng.standard_normal(shape).astype(dtype)
        else:
            high = warmup.int_high if warmup is not None else 1
            feeds[meta["name"]] = rng.integers(0, high, size=shape).astype(dtype)
    return feeds


def sample_bodies(
    metadata: dict[str, Any], warmup: WarmupInputs | None
) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The body and headers of one request per protocol of ``LOAD_PROTOCOLS``."""
    feeds = sample_inputs(metadata, warmup)
    datatypes = {m["name"]: m["datatype"] for m in metadata["inputs"]}
    described = [{"name": k, "datatype": datatypes[k], "shape": list(v.shape)} for k, v in feeds.items()]
    as_json = orjson.dumps(
        {"inputs": [{**d, "data": json_data(feeds[d["name"]])} for d in described]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    raws = [raw_bytes(feeds[d["name"]]) for d in described]
    header = orjson.dumps(
        {
            "inputs": [
                {**d, "parameters": {"binary_data_size": len(raw)}}
                for d, raw in zip(described, raws, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    json_headers = {"Content-Type": "application/json"}
    binary_headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return {"http_json": (as_json, json_headers), "http_binary": (header + b"".join(raws), binary_headers)}


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class _Client(asyncio.Protocol):
    """One connection of the closed loop: send, read one whole answer, send again."""

    transport: asyncio.Transport

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.status = 0
        self.expect = -1  # length of the whole answer once its head is read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.send()

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.target.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.expect < 0:
                end = self.buffer.find(_HEAD_END)
                if end < 0:
                    return
                head = bytes(self.buffer[:end])
                self.status = int(head[9:12])
                self.expect = end + 4 + _content_length(head)
            if len(self.buffer) < self.expect:
                return
            del self.buffer[: self.expect]
            self.expect = -1
            if not self.run.answered(self.sent_at, self.status == 200):
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class _Run:
    """The shared state of one cell: the window, the latencies, the connections still going."""

    def __init__(self, target: Target, window: tuple[float, float], done: asyncio.Future[None]) -> None:
        self.target = target
        self.start, self.stop = window
        self.latencies: list[float] = []
        self.errors = 0
        self.open = 0
        self.done = done
        self.loop = done.get_loop()

    def answered(self, sent_at: float, ok: bool) -> bool:
        """Count the answer (when in the window); whether to send another."""
        now = time.perf_counter()
        if self.start <= sent_at and now <= self.stop:
            if ok:
                self.latencies.append(now - sent_at)
            else:
                self.errors += 1
        return now < self.stop

    def lost(self, client: _Client) -> None:
        self.open -= 1
        if time.perf_counter() < self.stop:
            self.errors += 1  # the server closed a connection it should have kept: open another
            self.loop.create_task(self.connect())
        elif self.open == 0 and not self.done.done():
            self.done.set_result(None)

    async def connect(self) -> None:
        self.open += 1
        try:
            await self.loop.create_connection(lambda: _Client(self), self.target.host, self.target.port)
        except OSError:
            self.errors += 1
            self.open -= 1
            await asyncio.sleep(0.05)
            if time.perf_counter() < self.stop:
                self.loop.create_task(self.connect())
            elif self.open == 0 and not self.done.done():
                self.done.set_result(None)


async def closed_loop(target: Target, *, concurrency: int, seconds: float, warmup_s: float) -> Cell:
    """``concurrency`` connections for ``warmup_s`` + ``seconds``; only the last ``seconds`` count."""
    loop = asyncio.get_running_loop()
    begin = time.perf_counter()
    run = _Run(target, (begin + warmup_s, begin + warmup_s + seconds), loop.create_future())
    await asyncio.gather(*(run.connect() for _ in range(concurrency)))
    await asyncio.wait_for(run.done, timeout=warmup_s + seconds + 60)
    ordered = sorted(run.latencies)
    p50, p99 = (
        (float(np.percentile(ordered, 50)) * 1000, float(np.percentile(ordered, 99)) * 1000)
        if ordered
        else (None, None)
    )
    return Cell(concurrency, seconds, len(ordered), run.errors, p50, p99)


def measure(target: Target, *, concurrency: int, seconds: float, warmup_s: float) -> Cell:
    """``closed_loop`` on an event loop of its own (uvloop's when installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(closed_loop(target, concurrency=concurrency, seconds=seconds, warmup_s=warmup_s))
