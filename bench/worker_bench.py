"""Benchmark: the inference worker against raw ONNX Runtime and FastAPI peers, in one run.

    python bench/worker_bench.py            # full run (best of 3 rounds of 2 s per cell), about 12 minutes
    python bench/worker_bench.py --quick    # one round of 2 s per cell, about 4 minutes

Needs ``h2load`` (Debian: apt-get install nghttp2-client): it drives HTTP/1.1 and gRPC alike.
Builds its own models (worker_models.py), starts every server as its own
process on free ports (the worker with its default options unless
--worker-args says otherwise; peers from worker_peers.py), then for each
concurrency runs every server back to back so that ratios compare numbers
taken minutes apart at most. Prints the tables and rewrites the worker
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]

from worker_load import LoadResult, grpc_stream, h2load_grpc, h2load_http, raw_ort_subprocess  # noqa: E402
from worker_models import BenchModel, build  # noqa: E402
from worker_report import RAW, RAW_TUNED, TUNED, TUNED_LABEL, Row, write_results  # noqa: E402

PEERS = Path(__file__).resolve().parent / "worker_peers.py"


@dataclass
class Server:
    """A server process under test."""

    label: str
    process: subprocess.Popen[bytes]
    url: str
    grpc_target: str = ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


@contextmanager
def started(label: str, command: list[str], ready_path: str, port: int) -> Iterator[Server]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = Server(label, process, f"http://127.0.0.1:{port}")
    try:
        _wait_ready(server.url + ready_path, process)
        yield server
    finally:
        server.stop()


def worker_command(model: BenchModel, port: int, grpc_port: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "inference_worker",
        "serve",
        "--model-name",
        model.name,
        "--model-path",
        str(model.path),
        "--http-port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--log-level",
        "warning",
        *extra,
    ]


def peer_command(kind: str, model: BenchModel, port: int) -> list[str]:
    return [
        sys.executable,
        str(PEERS),
        kind,
        "--model",
        str(model.path),
        "--name",
        model.name,
        "--port",
        str(port),
    ]


def batch_counters(server: Server) -> tuple[float, float]:
    """(inferences, batches) of a worker so far."""
    text = httpx.get(server.url + "/metrics", timeout=10).text

    def value(name: str) -> float:
        found = re.search(rf"^kiln_worker_{name}_total\{{[^}}]*\}} (\S+)$", text, re.M)
        if found is None:
            raise RuntimeError(f"{server.url}/metrics has no kiln_worker_{name}_total")
        return float(found[1])

    return value("inferences"), value("batches")


@dataclass
class Cell:
    """One thing to measure at each concurrency (``server`` empty: raw ONNX Runtime, in its own process)."""

    server: str
    protocol: str
    run: Callable[[Server, int, float], LoadResult]
    concurrencies: tuple[int, ...] = (1, 16, 64)
    batches: bool = False
    raw: tuple[str, int] | None = None
    """For raw ONNX Runtime: its label and batch size (recorded as the row's concurrency and batch)."""


def raw_cells(model: BenchModel) -> list[Cell]:
    """Raw ONNX Runtime in the same rounds as the servers: batch 1 beside c=1, 8 and 32 beside c=64."""
    out = []
    for threads, sessions, label in ((2, 1, RAW), (1, 2, RAW_TUNED)):
        for batch in (1, 8, 32):

            def run(server: Server, concurrency: int, seconds: float, t: int = threads, n: int = sessions,
                    b: int = batch) -> LoadResult:  # fmt: skip
                return raw_ort_subprocess(model.path, model.sample_shape, b, seconds, t, n)

            when = (1,) if batch == 1 else (64,)
            out.append(Cell("", f"in-process, batch {batch}", run, when, raw=(label, batch)))
    return out


@dataclass
class Plan:
    model: BenchModel
    seconds: float
    warmup: float
    rounds: int
    rows: list[Row] = field(default_factory=list)


def cells(model: BenchModel) -> list[Cell]:
    infer = f"/v2/models/{model.name}/infer"
    binary_headers = {"Inference-Header-Content-Length": str(model.binary_header_length)}
    json_headers = {"Content-Type": "application/json"}

    def http(body: bytes, headers: dict[str, str]) -> Callable[[Server, int, float], LoadResult]:
        return lambda s, c, t: h2load_http(s.url + infer, body, c, t, headers)

    unknown = model.grpc_message.replace(model.name.encode(), b"x" * len(model.name), 1)
    live = b"\x00\x00\x00\x00\x00"
    return [
        Cell("worker", "HTTP JSON", http(model.json_body, json_headers), batches=True),
        Cell("worker", "HTTP binary", http(model.binary_body, binary_headers), batches=True),
        Cell(
            "worker",
            "gRPC unary",
            lambda s, c, t: h2load_grpc(s.grpc_target, "ModelInfer", model.grpc_message, c, t),
            batches=True,
        ),
        Cell(
            "worker",
            "gRPC stream",
            lambda s, c, t: grpc_stream(s.grpc_target, model.grpc_message, c, t),
            batches=True,
        ),
        Cell("worker-tuned", "HTTP JSON", http(model.json_body, json_headers), (1, 64), batches=True),
        Cell("worker-tuned", "HTTP binary", http(model.binary_body, binary_headers), (1, 64), batches=True),
        Cell("worker-asgi", "HTTP JSON", http(model.json_body, json_headers), (1, 64)),
        Cell("fastapi-batcher", "HTTP JSON", http(model.json_body, json_headers)),
        Cell("fastapi-floor", "HTTP JSON", http(model.json_body, json_headers)),
        Cell("trivial", "HTTP JSON", http(model.json_body, json_headers), (64,)),
        Cell("trivial", "HTTP binary", http(model.binary_body, binary_headers), (64,)),
        Cell(
            "worker",
            "gRPC unary, ServerLive",
            lambda s, c, t: h2load_grpc(s.grpc_target, "ServerLive", live, c, t),
            (64,),
        ),
        Cell(
            "worker",
            "gRPC stream, unknown model",
            lambda s, c, t: grpc_stream(s.grpc_target, unknown, c, t),
            (64,),
        ),
    ]


def _once(plan: Plan, cell: Cell, server: Server, concurrency: int) -> tuple[LoadResult, float | None]:
    before = batch_counters(server) if cell.batches else None
    result = cell.run(server, concurrency, plan.seconds)
    if before is None:
        return result, None
    after = batch_counters(server)
    return result, (after[0] - before[0]) / max(after[1] - before[1], 1)


def measure(plan: Plan, servers: dict[str, Server]) -> None:
    """Every cell at each concurrency, ``plan.rounds`` times round-robin; each cell keeps its best round.

    Other jobs share the machine: a round that one of them disturbed loses to
    one it did not, and every server gets the same number of chances.
    """
    for concurrency in (1, 16, 64):
        todo = [
            cell for cell in cells(plan.model) + raw_cells(plan.model) if concurrency in cell.concurrencies
        ]
        best: dict[int, tuple[LoadResult, float | None]] = {}
        for round_ in range(plan.rounds):
            for index, cell in enumerate(todo):
                server = servers[cell.server or "trivial"]
                if round_ == 0 and cell.raw is None:
                    cell.run(server, concurrency, plan.warmup)
                result, batch = _once(plan, cell, server, concurrency)
                if index not in best or result.rate > best[index][0].rate:
                    best[index] = (result, batch)
        for index, cell in enumerate(todo):
            result, batch = best[index]
            if cell.raw is not None:
                row = Row(plan.model.name, cell.raw[0], cell.protocol, cell.raw[1], result, cell.raw[1])
            else:
                row = Row(
                    plan.model.name, servers[cell.server].label, cell.protocol, concurrency, result, batch
                )
            plan.rows.append(row)
            print(row.line(), flush=True)


def _servers(stack: ExitStack, model: BenchModel, worker_args: list[str]) -> dict[str, Server]:
    """Start every server under test on free ports; the ExitStack stops them."""
    grpc_port = free_port()
    ready = "/v2/health/ready"
    specs: dict[str, tuple[str, Callable[[int], list[str]], str]] = {
        "worker": ("worker", lambda p: worker_command(model, p, grpc_port, worker_args), ready),
        "worker-tuned": (TUNED_LABEL, lambda p: worker_command(model, p, -1, [*worker_args, *TUNED]), ready),
        "worker-asgi": (
            "worker routes on uvicorn (ASGI)",
            lambda p: peer_command("worker-asgi", model, p),
            ready,
        ),
        "fastapi-batcher": (
            "FastAPI + asyncio batcher",
            lambda p: peer_command("fastapi-batcher", model, p),
            "/docs",
        ),
        "fastapi-floor": (
            "FastAPI, one run per request",
            lambda p: peer_command("fastapi-floor", model, p),
            "/docs",
        ),
        "trivial": ("load client ceiling (trivial server)", lambda p: peer_command("trivial", model, p), "/"),
    }
    servers = {}
    for key, (label, command, path) in specs.items():
        port = free_port()
        servers[key] = stack.enter_context(started(label, command(port), path, port))
    servers["worker"].grpc_target = f"127.0.0.1:{grpc_port}"
    return servers


def run_model(plan: Plan, worker_args: list[str]) -> None:
    with ExitStack() as stack:
        measure(plan, _servers(stack, plan.model, worker_args))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s per cell instead of 8")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--worker-args", default="", help="extra options for inference-worker serve")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("worker_bench: needs h2load (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    seconds, warmup, rounds = (2.0, 1.0, 1) if args.quick else (2.0, 2.0, 3)
    started_at = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        print(f"worker_bench: load average {load_before[0]:.2f}: other work shares the CPUs", file=sys.stderr)
    plans = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            plan = Plan(build(name, Path(tmp)), seconds, warmup, rounds)
            run_model(plan, shlex.split(args.worker_args))
            plans.append(plan)
        command = "python bench/worker_bench.py" + (" --quick" if args.quick else "")
        if args.worker_args:
            command += f" --worker-args {shlex.quote(args.worker_args)}"
        write_results(
            args.results,
            plans,
            command=command,
            started=started_at,
            load=(load_before, os.getloadavg()),
            machine=platform.machine(),
            seconds=seconds,
            rounds=rounds,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
