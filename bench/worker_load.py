"""Load generators for worker_bench.py, and the raw ONNX Runtime ceiling.

HTTP: ``wrk`` (C, one thread, closed loop: one request in flight per
connection), with a Lua script that posts the body and prints the count and
latency percentiles, or ``h2load --h1`` (the same closed loop, so that HTTP and
gRPC compare with one client). gRPC unary: ``h2load`` (C, up to 8 HTTP/2 connections
sharing ``concurrency`` streams in flight) posting a pre-framed ModelInferRequest.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

WRK_SCRIPT = """
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "{method}"
{headers}
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One cell: requests completed in ``seconds``, latency percentiles, failures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> LoadResult:
    """Closed-loop HTTP load with wrk: ``concurrency`` connections, one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script = Path(tmp) / "post.lua"
        method = "POST" if body else "GET"
        script.write_text(WRK_SCRIPT.format(body=body_file, method=method, headers=lines))
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "60s",
            "-s",
            str(script),
            url,
        ]
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 120
        ).stdout
    found = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no result: {out}")
    n, duration_us, p50, p99, status_errors, socket_errors = map(int, found.groups())
    return LoadResult(n, duration_us / 1e6, p50 / 1000, p99 / 1000, status_errors + socket_errors)


def _h2load(options: list[str], body: bytes, url: str, seconds: float) -> LoadResult:
    """Run h2load posting ``body`` to ``url`` for ``seconds`` after a 1 s warm-up; per-request latencies."""
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "data", Path(tmp) / "log"
        data.write_bytes(body)
        command = [
            "h2load", *options, f"-D{max(1, round(seconds))}", "--warm-up-time=1",
            "-d", str(data), "--log-file", str(log), url,
        ]  # fmt: skip
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 120
        ).stdout
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
    return LoadResult(n, n / rate if rate else float(seconds), float(p50), float(p99), n - ok)


def h2load_http(
    url: str, body: bytes, concurrency: int, seconds: float, headers: dict[str, str] | None = None
) -> LoadResult:
    """Closed-loop HTTP/1.1 load with h2load: ``concurrency`` connections, one request in flight each.

    ``headers``: sent with every request (default: a JSON content type).
    """
    sent = headers if headers is not None else {"content-type": "application/json"}
    options = ["--h1", f"-c{concurrency}", "-m1"]
    for name, value in sent.items():
        options += ["-H", f"{name}: {value}"]
    return _h2load(options, body, url, seconds)


def h2load_grpc(target: str, method: str, framed: bytes, concurrency: int, seconds: float) -> LoadResult:
    """Closed-loop gRPC unary load with h2load: up to 8 connections sharing ``concurrency`` streams.

    h2load counts a request by its HTTP status; a gRPC error (``grpc-status`` in the
    trailers) counts as done: check a server's answer once before measuring it.
    """
    connections = min(concurrency, 8)
    options = [
        f"-c{connections}", f"-m{concurrency // connections}",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
    ]  # fmt: skip
    return _h2load(options, framed, f"http://{target}/inference.GRPCInferenceService/{method}", seconds)


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
