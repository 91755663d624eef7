"""Benchmark: the worker beside Triton (via PyTriton), TorchServe and FastAPI, h2load for every server.

    python bench/peer_bench.py            # 15 s per cell after a 3 s warm-up, about 12 minutes
    python bench/peer_bench.py --quick    # 3 s per cell after a 1 s warm-up, about 4 minutes

Needs ``h2load`` (apt-get install nghttp2-client) and, for the peers that are
not Kiln's dependencies, a Python of their own (never requirements.lock):

    python3 -m venv /opt/triton-venv
    /opt/triton-venv/bin/pip install nvidia-pytriton onnxruntime numpy
    python3 -m venv /opt/ts-venv    # TorchServe takes torch, numpy, onnxruntime from Kiln's venv:
    echo "$PWD/.venv/lib/python3.11/site-packages" > /opt/ts-venv/lib/python3.11/site-packages/kiln.pth
    /opt/ts-venv/bin/pip install torchserve torch-model-archiver    # and Java 17
    export KILN_BENCH_TRITON_PYTHON=/opt/triton-venv/bin/python
    export KILN_BENCH_TORCHSERVE_PYTHON=/opt/ts-venv/bin/python

(or ``--triton-python`` / ``--torchserve-python``; a peer without one is left
out and the section says so). For each model (worker_models.py: the CNN
3x64x64 and the MLP 64-256-10) it starts every server: the worker with its
default options (HTTP and gRPC), Triton (triton_peer.py: Triton's C++ HTTP and
gRPC front ends and dynamic batcher, max batch 32, no queue delay, an ONNX
Runtime callable), TorchServe (torchserve_peer.py: batch 32, 5 ms delay,
HTTP JSON), and worker_peers.py's FastAPI servers (HTTP JSON). Then at c=1
and c=64 it drives each server and protocol in turn with h2load (HTTP/1.1
JSON, HTTP/1.1 with the binary tensor extension, gRPC unary with raw
contents), beside raw ONNX Runtime at the same batch. Every server's answer to
each protocol is checked once before it is measured (h2load counts a gRPC
error as a success). Prints the tables, rewrites the "peers" section of
bench/RESULTS.md and the peer rows of README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from peer_report import Context, write  # noqa: E402
from worker_bench import Server, batch_counters, free_port, peer_command, started, worker_command  # noqa: E402
from worker_load import LoadResult, h2load_grpc, h2load_http, raw_ort_subprocess  # noqa: E402
from worker_models import BenchModel, build  # noqa: E402
from worker_report import RAW, Row  # noqa: E402

JSON, BINARY, GRPC = "HTTP JSON", "HTTP binary", "gRPC unary"
WORKER, TRITON, TORCHSERVE = "worker", "Triton (PyTriton)", "TorchServe"
BATCHER, FLOOR = "FastAPI + asyncio batcher", "FastAPI, one run per request"
CONCURRENCY = (1, 64)


@dataclass
class Peer:
    """A running server: where to send each protocol, and its batch counters where it has them."""

    server: Server
    infer_path: str
    protocols: tuple[str, ...]
    counters: Callable[[], tuple[float, float]] | None = None


def triton_counters(metrics_url: str, model: str) -> tuple[float, float]:
    """(inferences, executions) from Triton's Prometheus metrics."""
    text = httpx.get(metrics_url, timeout=10).text

    def value(metric: str) -> float:
        for line in text.splitlines():
            if line.startswith(f'{metric}{{model="{model}"'):
                return float(line.rsplit(" ", 1)[1])
        raise RuntimeError(f"{metrics_url} has no {metric} for {model}")

    return value("nv_inference_count"), value("nv_inference_exec_count")


def request(model: BenchModel, protocol: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one HTTP request in ``protocol``."""
    if protocol == BINARY:
        return model.binary_body, {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(model.binary_header_length),
        }
    return model.json_body, {"content-type": "application/json"}


def check(peer: Peer, model: BenchModel, protocol: str, timeout: float = 180.0) -> None:
    """One request, retried until the server answers it correctly (models load after the port opens)."""
    deadline, problem = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            if protocol == GRPC:
                problem = _grpc_problem(peer.server.grpc_target, model)
            else:
                body, headers = request(model, protocol)
                answer = httpx.post(
                    peer.server.url + peer.infer_path, content=body, headers=headers, timeout=30
                )
                problem = (
                    "" if answer.status_code == 200 and b"output" in answer.content else answer.text[:300]
                )
        except (httpx.TransportError, OSError) as exc:
            problem = str(exc)
        if not problem:
            return
        if peer.server.process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"{peer.server.label} {protocol}: no correct answer: {problem}")


def _grpc_problem(target: str, model: BenchModel) -> str:
    import grpc

    from inference_worker import build_protos

    pb2, pb2_grpc = build_protos.load()
    with grpc.insecure_channel(target) as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            reply = stub.ModelInfer(pb2.ModelInferRequest.FromString(model.grpc_message[5:]), timeout=30)
        except grpc.RpcError as exc:
            return f"{exc.code()}: {exc.details()}"
    return "" if reply.outputs and reply.raw_output_contents else f"no output in {reply}"


def load(peer: Peer, model: BenchModel, protocol: str, concurrency: int, seconds: float) -> LoadResult:
    if protocol == GRPC:
        return h2load_grpc(peer.server.grpc_target, "ModelInfer", model.grpc_message, concurrency, seconds)
    body, headers = request(model, protocol)
    return h2load_http(peer.server.url + peer.infer_path, body, concurrency, seconds, headers)


@contextmanager
def servers(model: BenchModel, pythons: dict[str, str]) -> Iterator[dict[str, Peer]]:
    """Every server for ``model`` on free ports, each checked in each of its protocols."""
    infer, ready = f"/v2/models/{model.name}/infer", "/v2/health/live"
    with ExitStack() as stack:
        peers: dict[str, Peer] = {}

        def start(label: str, command: Callable[[int], list[str]], path: str) -> Server:
            port = free_port()
            return stack.enter_context(started(label, command(port), path, port))

        grpc_port = free_port()
        worker = start(WORKER, lambda p: worker_command(model, p, grpc_port, []), ready)
        worker.grpc_target = f"127.0.0.1:{grpc_port}"
        peers[WORKER] = Peer(worker, infer, (JSON, BINARY, GRPC), lambda: batch_counters(worker))
        if TRITON in pythons:
            grpc_port, metrics_port = free_port(), free_port()
            script = [pythons[TRITON], str(HERE / "triton_peer.py"), "--model", str(model.path)]
            ports = ["--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
            triton = start(
                TRITON, lambda p: [*script, "--name", model.name, "--http-port", str(p), *ports], ready
            )
            triton.grpc_target = f"127.0.0.1:{grpc_port}"
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            peers[TRITON] = Peer(
                triton, infer, (JSON, BINARY, GRPC), lambda: triton_counters(metrics, model.name)
            )
        if TORCHSERVE in pythons:
            script = [pythons[TORCHSERVE], str(HERE / "torchserve_peer.py"), "--model", str(model.path)]
            ts = start(TORCHSERVE, lambda p: [*script, "--name", model.name, "--port", str(p)], "/ping")
            peers[TORCHSERVE] = Peer(ts, f"/predictions/{model.name}", (JSON,))
        for kind, label in (("fastapi-batcher", BATCHER), ("fastapi-floor", FLOOR)):
            server = start(label, partial(peer_command, kind, model), "/docs")
            peers[label] = Peer(server, infer, (JSON,))
        for peer in peers.values():
            for protocol in peer.protocols:
                check(peer, model, protocol)
        yield peers


@dataclass(frozen=True)
class Cell:
    server: str
    protocol: str
    concurrency: int


def cells(peers: dict[str, Peer], concurrency: int) -> list[Cell]:
    """c=64: every server in each of its protocols; c=1: HTTP JSON (the lone request's latency)."""
    return [
        Cell(name, protocol, concurrency)
        for name, peer in peers.items()
        for protocol in peer.protocols
        if concurrency > 1 or protocol == JSON
    ]


def measure(
    model: BenchModel, peers: dict[str, Peer], seconds: float, warmup: float, rounds: int
) -> list[Row]:
    """Each cell ``rounds`` times round-robin (the median round kept), raw ONNX Runtime beside them."""
    rows: list[Row] = []
    for concurrency in CONCURRENCY:
        todo = cells(peers, concurrency)
        runs: dict[Cell, list[tuple[LoadResult, float | None]]] = {}
        raw_batch = 1 if concurrency == 1 else 32
        raws = []
        for round_ in range(rounds):
            for cell in todo:
                peer = peers[cell.server]
                if round_ == 0:
                    load(peer, model, cell.protocol, concurrency, warmup)
                before = peer.counters() if peer.counters else None
                result = load(peer, model, cell.protocol, concurrency, seconds)
                batch = None
                if peer.counters and before:
                    after = peer.counters()
                    batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
                runs.setdefault(cell, []).append((result, batch))
                label = f"{model.name} c={concurrency} {cell.server} {cell.protocol}"
                print(f"  {label}: {result.rate:,.0f} req/s", flush=True)
            raws.append(raw_ort_subprocess(model.path, model.sample_shape, raw_batch, seconds, 2, 1))
        for cell, results in runs.items():
            result, batch = sorted(results, key=lambda item: item[0].rate)[len(results) // 2]
            rows.append(Row(model.name, cell.server, cell.protocol, concurrency, result, batch))
        raw = sorted(raws, key=lambda r: r.rate)[len(raws) // 2]
        rows.append(Row(model.name, RAW, f"in-process, batch {raw_batch}", raw_batch, raw, raw_batch))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s per cell after a 1 s warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every cell (the median is kept)")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--triton-python", default=os.environ.get("KILN_BENCH_TRITON_PYTHON", ""))
    parser.add_argument("--torchserve-python", default=os.environ.get("KILN_BENCH_TORCHSERVE_PYTHON", ""))
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("peer_bench: needs h2load (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    pythons = {k: v for k, v in ((TRITON, args.triton_python), (TORCHSERVE, args.torchserve_python)) if v}
    seconds, warmup = (3.0, 1.0) if args.quick else (15.0, 3.0)
    context = Context(
        command="python bench/peer_bench.py" + (" --quick" if args.quick else "")
        + (f" --rounds {args.rounds}" if args.rounds != 1 else ""),
        started=datetime.datetime.now(datetime.UTC),
        load_before=os.getloadavg()[0],
        seconds=seconds,
        rounds=args.rounds,
        pythons=pythons,
    )  # fmt: skip
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = build(name, Path(tmp))
            with servers(model, pythons) as peers:
                if TRITON in peers:
                    context.versions[TRITON] = httpx.get(peers[TRITON].server.url + "/v2", timeout=10).json()
                rows += measure(model, peers, seconds, warmup, args.rounds)
    write(rows, context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
