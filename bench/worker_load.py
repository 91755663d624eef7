"""Load generators for the benchmarks, and the raw ONNX Runtime ceiling.

One load generator for every server and protocol, so that their rows compare: ``h2load``
(Debian's nghttp2-client, C). HTTP: ``h2load --h1``, a closed loop with one request in flight per
connection. gRPC unary: up to 8 HTTP/2 connections sharing ``concurrency`` streams in flight,
posting a pre-framed ModelInferRequest.
gRPC streaming: this module's ``grpc-stream`` command, a grpc.aio client
keeping ``concurrency`` requests in flight on one ModelStreamInfer stream.
Each is measured against a trivial endpoint too, so its own ceiling is known.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    """One cell: requests completed in ``seconds``, latency percentiles, failures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    counted: tuple[float, ...] = ()
    """How far a caller's counters (servers' CPU seconds, say) moved over the measured window."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


Counter = Callable[[], tuple[float, ...]]
"""Counters read around a load generator's measured window."""

WARM_UP_S = 1
"""h2load's warm-up before its measured window (connections open, servers warm)."""


def _h2load(
    options: list[str], body: bytes, url: str, seconds: float, counter: Counter | None = None
) -> LoadResult:
    """Run h2load posting ``body`` to ``url`` (a GET without one) for ``seconds`` after a warm-up.

    ``counter`` (servers' CPU seconds, say) is read as the measured window opens and when h2load
    has finished; the differences are the result's ``counted``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "data", Path(tmp) / "log"
        data.write_bytes(body)
        command = [
            "h2load", *options, f"-D{max(1, round(seconds))}", f"--warm-up-time={WARM_UP_S}",
            *(["-d", str(data)] if body else []), "--log-file", str(log), url,
        ]  # fmt: skip
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
            if counter is not None:
                time.sleep(WARM_UP_S)
                start = counter()
            try:
                out, err = process.communicate(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                raise
        counted = tuple(b - a for a, b in zip(start, counter(), strict=True)) if counter is not None else ()
        if process.returncode:
            raise RuntimeError(f"h2load failed ({process.returncode}): {err or out}")
        latencies = [
            int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2
        ]
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    # "finished in" counts the warm-up too while "done" counts only the measured requests:
    # h2load's own rate is over the measured window.
    finished = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    if done is None or finished is None or not latencies:
        raise RuntimeError(f"h2load printed no result: {out}")
    n, ok, rate = int(done[1]), int(done[2]), float(finished[1])
    p50, p99 = np.percentile(latencies, [50, 99]) / 1000
    return LoadResult(n, n / rate if rate else float(seconds), float(p50), float(p99), n - ok, counted)


def h2load_http(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    counter: Counter | None = None,
) -> LoadResult:
    """Closed-loop HTTP/1.1 load with h2load: ``concurrency`` connections, one request in flight each.

    ``headers``: sent with every request (default: a JSON content type).
    """
    sent = headers if headers is not None else {"content-type": "application/json"}
    options = ["--h1", f"-c{concurrency}", "-m1"]
    for name, value in sent.items():
        options += ["-H", f"{name}: {value}"]
    return _h2load(options, body, url, seconds, counter)


def h2load_grpc(
    target: str,
    method: str,
    framed: bytes,
    concurrency: int,
    seconds: float,
    counter: Counter | None = None,
) -> LoadResult:
    """Closed-loop gRPC unary load with h2load: up to 8 connections sharing ``concurrency`` streams.

    h2load counts a request by its HTTP status; a gRPC error (``grpc-status`` in the
    trailers) counts as done: check a server's answer once before measuring it.
    """
    connections = min(concurrency, 8)
    options = [
        f"-c{connections}", f"-m{concurrency // connections}",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
    ]  # fmt: skip
    url = f"http://{target}/inference.GRPCInferenceService/{method}"
    return _h2load(options, framed, url, seconds, counter)


async def _stream(target: str, payload: bytes, concurrency: int, seconds: float) -> LoadResult:
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")()
        sent: deque[float] = deque()
        latencies: list[float] = []
        errors = 0
        for _ in range(concurrency):
            sent.append(time.perf_counter())
            await call.write(payload)
        started = time.perf_counter()
        stop = started + seconds
        while True:
            response = await call.read()
            now = time.perf_counter()
            latencies.append(now - sent.popleft())
            errors += response[:1] == b"\x0a"  # field 1, error_message, is set
            if now < stop:
                sent.append(time.perf_counter())
                await call.write(payload)
            elif not sent:
                break
        elapsed = time.perf_counter() - started
        await call.done_writing()
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return LoadResult(len(latencies) - concurrency, elapsed, float(p50), float(p99), errors)


def grpc_stream(target: str, framed: bytes, concurrency: int, seconds: float) -> LoadResult:
    """Closed-loop gRPC streaming load, in a subprocess of its own (this module's grpc-stream command)."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as message:
        message.write(framed[5:])
        message.flush()
        command = [
            sys.executable,
            __file__,
            "grpc-stream",
            target,
            message.name,
            str(concurrency),
            str(seconds),
        ]
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 120
        ).stdout
    return LoadResult(**json.loads(out.splitlines()[-1]))


def raw_ort(
    model: Path, shape: tuple[int, ...], batch: int, seconds: float, threads: int = 2, sessions: int = 1
) -> LoadResult:
    """In-process ONNX Runtime throughput at one batch size (samples in ``requests``).

    ``sessions`` sessions of ``threads`` intra-op threads each run side by side
    on their own Python threads (ONNX Runtime releases the GIL).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    runners = [
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]) for _ in range(sessions)
    ]
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    latencies: list[list[float]] = [[] for _ in runners]

    def work(index: int, until: float) -> None:
        session = runners[index]
        while (now := time.perf_counter()) < until:
            session.run(None, {"input": x})
            latencies[index].append(time.perf_counter() - now)

    for session in runners:
        for _ in range(3):
            session.run(None, {"input": x})
    started = time.perf_counter()
    threads_ = [threading.Thread(target=work, args=(i, started + seconds)) for i in range(sessions)]
    for thread in threads_:
        thread.start()
    for thread in threads_:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = [value for values in latencies for value in values]
    p50, p99 = np.percentile(flat, [50, 99]) * 1000
    return LoadResult(len(flat) * batch, elapsed, float(p50), float(p99), 0)


def raw_ort_subprocess(
    model: Path, shape: tuple[int, ...], batch: int, seconds: float, threads: int = 2, sessions: int = 1
) -> LoadResult:
    """``raw_ort`` in a fresh process, so nothing else shares its interpreter."""
    command = [
        sys.executable,
        __file__,
        "raw",
        str(model),
        ",".join(map(str, shape)),
        str(batch),
        str(seconds),
        str(threads),
        str(sessions),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    return LoadResult(**json.loads(out.splitlines()[-1]))


def _main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    stream = commands.add_parser("grpc-stream")
    stream.add_argument("target")
    stream.add_argument("message", type=Path)
    stream.add_argument("concurrency", type=int)
    stream.add_argument("seconds", type=float)
    raw = commands.add_parser("raw")
    raw.add_argument("model", type=Path)
    raw.add_argument("shape")
    raw.add_argument("batch", type=int)
    raw.add_argument("seconds", type=float)
    raw.add_argument("threads", type=int)
    raw.add_argument("sessions", type=int)
    args = parser.parse_args()
    result: Any
    if args.command == "grpc-stream":
        import uvloop

        result = uvloop.run(_stream(args.target, args.message.read_bytes(), args.concurrency, args.seconds))
    else:
        shape = tuple(int(d) for d in args.shape.split(","))
        result = raw_ort(args.model, shape, args.batch, args.seconds, args.threads, args.sessions)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    _main()
