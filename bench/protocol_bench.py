"""Benchmark: HTTP and gRPC, direct to a worker and through the gateway, with one load generator.

    python bench/protocol_bench.py            # 6 rounds of 3 s per cell, about 6 minutes
    python bench/protocol_bench.py --quick    # 2 rounds of 2 s per cell, about 2 minutes

Needs ``h2load`` (Debian: apt-get install nghttp2-client) and Redis on
127.0.0.1:6379 (db 15, under a key of this run). h2load drives both protocols,
so their numbers compare: HTTP/1.1 JSON (``--h1``, one connection per client,
one request in flight each) and gRPC unary (HTTP/2, up to 8 connections
sharing the streams in flight), the same MLP (64 -> 256 -> 10, one row) and
the same sample. Starts one worker with default options (HTTP and gRPC) and
the gateway with default options following a routing table that sends
deployment ``mlp`` to that worker, then measures eight cells round-robin in
each round (direct / gateway x HTTP / gRPC x c=1 / c=64), so each ratio
compares numbers taken seconds apart, in two placements (``LAYOUTS``) each round:
every process on every core ("shared"), and the gateway on a core of its own with
h2load, the worker and this script on the others ("gateway core"; Linux CPU
affinity, every thread of each process), as a gateway deployed apart from its
workers runs. Direct cells of a placement leave the gateway's core idle.

Prints the table and rewrites the "Protocols" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import worker_models
from gateway_bench import REDIS_URL, build_mlp, spawn, wait_http
from results_md import cpu_name, markers, write_section
from worker_load import LoadResult, h2load_grpc, h2load_http

START, END = markers("protocol")
LAYOUTS = ("shared", "gateway core")
PATHS = ("direct", "gateway")
PROTOCOLS = ("http", "grpc")
CONCURRENCY = (1, 64)
NOTES = (
    "### Reading it",
    "",
    "- One load generator for both protocols, so the gRPC/HTTP ratio is the servers' own. The worker's gRPC",
    "  server and the gateway's gRPC hop (its server and its calls to the replicas) run on our own HTTP/2",
    "  core (`h2_base`, `h2_send`, `hpack_codec`, `grpc_server`, `gateway/grpc_upstream`). Before it, on",
    "  grpcio's Python server (grpc.aio), a quiet 16-core run measured gRPC at 0.22 of HTTP on the worker",
    "  (c=64) and the gateway's gRPC hop at +1.18 ms p50 (c=1) and 0.62 of direct (c=64).",
    "- What a connection's read makes other connections write goes out when that read ends",
    "  (`h2_send.ReadScope`): the gateway's calls to a replica leave as each client's read is parsed, and",
    "  a worker's answers as each batch is delivered. Until 2026-12-06 they waited for the end of the",
    "  event loop's iteration, after every other socket's read, and the replica sat idle meanwhile: the",
    "  gateway's gRPC hop kept 0.66 of direct at c=64 (this bench at 01:36), 0.94 at 07:46. Since 08:30",
    "  the worker runs a quick model's batches on its event loop: direct is 30-40% faster and the",
    "  gateway's rate held, so on two shared cores the ratio is the gateway's CPU share ('Inline batches').",
    "- On a 2-core machine h2load, the gateway and the worker share two cores: in the shared placement",
    "  every ratio through the gateway falls (HTTP's too), as the gateway's CPU is taken from the worker",
    "  and the load generator. The gateway-core placement is how a gateway runs in a deployment (its own",
    "  cores or host): h2load and the worker get the same core in both paths, and the ratio is what the",
    "  hop itself costs the worker (smaller batches, one connection carrying every call).",
    "- The replica is told a call's deadline only when the client's is shorter than the gateway's own",
    "  upstream timeout, and the gateway keeps one deadline timer per replica connection: a timer armed",
    "  and cancelled per call cost the worker and the gateway about 2 µs each of a ~35 µs call.",
)
Cell = tuple[str, str, str, int]
"""(layout, path, protocol, concurrency)."""


def place(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` on ``cpus`` (threads started later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (OSError, ValueError):  # a thread that ended meanwhile
            continue


def grpc_message(body: bytes) -> bytes:
    """The JSON body's sample as a gRPC-framed ModelInferRequest with raw contents."""
    import numpy as np

    tensor = json.loads(body)["inputs"][0]
    return worker_models.grpc_message(
        "mlp", np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    )


def run(quick: bool) -> None:
    import redis

    from inference_worker.contracts.routing import (
        DeploymentRecord,
        ReplicaRecord,
        TableRecord,
        VariantRecord,
        encode_table,
    )

    rounds, seconds = (2, 2.0) if quick else (6, 3.0)
    load_before = os.getloadavg()
    key = f"kiln-bench:{uuid.uuid4().hex[:8]}:routing"
    client = redis.Redis.from_url(REDIS_URL)
    cells: dict[Cell, list[LoadResult]] = {}
    every = os.sched_getaffinity(0)
    layouts = LAYOUTS if len(every) > 1 else LAYOUTS[:1]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        body = build_mlp(Path(tmp) / "mlp.onnx")
        message = grpc_message(body)
        serve = ["serve", "--model-name", "mlp", "--model-path", str(Path(tmp) / "mlp.onnx")]
        worker = stack.enter_context(spawn([*serve, "--http-port", "0", "--grpc-port", "0"]))
        wait_http(worker.url, "/v2/health/ready")
        replica = ReplicaRecord(url=worker.url, id=1, grpc=f"127.0.0.1:{worker.grpc_port}", version="1")
        variant = VariantRecord(name="a", model_name="mlp", version="1", weight=100, replicas=(replica,))
        table = TableRecord(
            version=1, deployments={"mlp": DeploymentRecord(model="mlp", variants=(variant,))}
        )
        client.set(key, json.dumps(encode_table(table)))
        stack.callback(client.delete, key, f"{key}:stats")
        gateway = stack.enter_context(
            spawn(
                ["gateway", "--port", "0", "--grpc-port", "0", "--redis-url", REDIS_URL, "--routing-key", key]
            )
        )
        wait_http(gateway.url, "/v2/health/ready")
        targets = {"direct": worker, "gateway": gateway}

        def arrange(layout: str) -> None:
            own = {max(every)} if layout == "gateway core" else every
            rest = every - own or every
            os.sched_setaffinity(0, rest)  # h2load, started per cell, inherits it
            place(worker.popen.pid, rest)
            place(gateway.popen.pid, own)

        def measure(path: str, protocol: str, concurrency: int, duration: float) -> LoadResult:
            proc = targets[path]
            if protocol == "http":
                return h2load_http(f"{proc.url}/v2/models/mlp/infer", body, concurrency, duration)
            return h2load_grpc(f"127.0.0.1:{proc.grpc_port}", "ModelInfer", message, concurrency, duration)

        for path in PATHS:  # warm-up: connections, code paths
            for protocol in PROTOCOLS:
                measure(path, protocol, 64, 1)
        for index in range(rounds):
            for layout in layouts:
                arrange(layout)
                for concurrency in CONCURRENCY:
                    for path in PATHS:
                        for protocol in PROTOCOLS:
                            result = measure(path, protocol, concurrency, seconds)
                            cells.setdefault((layout, path, protocol, concurrency), []).append(result)
            print(f"round {index + 1}/{rounds} done", flush=True)
        arrange("shared")
    client.close()
    report(cells, rounds, seconds, load_before, quick)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(cells: dict[Cell, list[LoadResult]], a: Cell, b: Cell) -> str:
    """Median over rounds of a's req/s over b's, with the per-round values."""
    ratios = [x.rate / y.rate for x, y in zip(cells[a], cells[b], strict=True) if y.rate]
    return f"**{_median(ratios):.2f}** (per round: {', '.join(f'{r:.2f}' for r in ratios)})"


def _added(cells: dict[Cell, list[LoadResult]], layout: str, protocol: str) -> str:
    direct, gateway = cells[layout, "direct", protocol, 1], cells[layout, "gateway", protocol, 1]
    added = [g.p50_ms - d.p50_ms for d, g in zip(direct, gateway, strict=True)]
    return f"**{_median(added):+.3f} ms** (per round: {', '.join(f'{a:+.3f}' for a in added)})"


def _targets(cells: dict[Cell, list[LoadResult]], layout: str) -> list[str]:
    def at(path: str, protocol: str) -> Cell:
        return (layout, path, protocol, 64)

    http, grpc_ = ("direct", "http"), ("direct", "grpc")
    return [
        f"- gRPC / HTTP req/s on the worker at c=64: {_ratio(cells, at(*grpc_), at(*http))}; "
        "target at least 1.",
        f"- Through the gateway / direct at c=64, HTTP: {_ratio(cells, at('gateway', 'http'), at(*http))}; "
        f"gRPC: {_ratio(cells, at('gateway', 'grpc'), at(*grpc_))}; target at least 0.85.",
        f"- p50 the gateway adds at c=1, HTTP: {_added(cells, layout, 'http')}; "
        f"gRPC: {_added(cells, layout, 'grpc')}; target at most +0.3 ms.",
    ]


def report(
    cells: dict[Cell, list[LoadResult]],
    rounds: int,
    seconds: float,
    load_before: tuple[float, float, float],
    quick: bool,
) -> None:
    order = {layout: index for index, layout in enumerate(LAYOUTS)}
    rows = [
        f"| {layout} | {path} | {protocol} | {c} | {_median([r.rate for r in runs]):,.0f} "
        f"| {_median([r.p50_ms for r in runs]):.3f} | {_median([r.p99_ms for r in runs]):.2f} "
        f"| {sum(r.errors for r in runs)} |"
        for (layout, path, protocol, c), runs in sorted(
            cells.items(), key=lambda item: (order[item[0][0]], item[0][3], item[0][1])
        )
    ]
    layouts = [layout for layout in LAYOUTS if any(cell[0] == layout for cell in cells)]
    targets = []
    for layout in layouts:
        placement = (
            "every process on every core"
            if layout == "shared"
            else "the gateway on a core of its own; h2load and the worker on the others"
        )
        targets += [f"**{layout}** ({placement}):", "", *_targets(cells, layout), ""]
    lines = [
        START,
        "## Protocols",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu_name()}, "
        f"{os.cpu_count()} cores. Command: `python bench/protocol_bench.py{' --quick' if quick else ''}` "
        "(MLP 64->256->10, "
        "one row; h2load for both protocols: HTTP/1.1 JSON and gRPC unary with raw contents; one worker "
        f"and the gateway with default options; {rounds} rounds of {seconds:g} s per cell, cells round-robin "
        f"in each round, each round in {len(layouts)} placement(s), medians over rounds). Load average "
        f"before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f} (a high 'before' means other jobs "
        "shared the machine: read ratios only).",
        "",
        *targets,
        "| placement | path | protocol | c | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *NOTES,
        "",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    write_section(section, START, END)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s per cell")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
