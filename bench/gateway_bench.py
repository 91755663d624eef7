"""Benchmark: what the gateway costs, direct to a worker vs through the gateway, in one run.

    python bench/gateway_bench.py            # 8 rounds of 2 s per cell, about 3 minutes
    python bench/gateway_bench.py --quick    # 3 rounds of 1 s per cell, about 1 minute

Needs ``h2load`` (Debian: apt-get install nghttp2-client) and Redis on 127.0.0.1:6379 (db 15
is used, under a key of this run). Builds the MLP of shared/performance.md
(64 -> 256 -> 10) with onnx.helper, starts two workers (``python -m
inference_worker serve``, default options) and the gateway (``python -m
inference_worker gateway``), publishes a routing table with deployment ``mlp``
(one variant on worker 1) and ``split`` (50/50 between the two workers), then:

1. Upstream clients: the per-request cost of the HTTP clients the gateway
   could use (httpx, aiohttp, the gateway's own pool), each in a fresh process
   against worker 1: p50 of sequential requests, and req/s with 64 in flight.
2. Cells, round-robin within each round so ratios compare numbers taken
   seconds apart: direct to worker 1, through the gateway, and the 50/50
   split, at c=1 and c=64, with h2load (HTTP/1.1, closed loop). CPU time of
   the gateway and workers is read from /proc around each cell's measured window.

Prints the tables and rewrites the "Gateway" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from results_md import cpu_name, markers, package_version, write_section
from worker_load import h2load_http

ROOT = Path(__file__).resolve().parent.parent
START, END = markers("gateway")
REDIS_URL = "redis://127.0.0.1:6379/15"
WORKER_ARGS = ""


# -- model and processes -------------------------------------------------------------------------
def build_mlp(path: Path) -> bytes:
    """The MLP of shared/performance.md, and one JSON request body for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)
        for name, shape in (("W1", (64, 256)), ("B1", (256,)), ("W2", (256, 10)), ("B2", (10,)))
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["h"]),
        helper.make_node("Add", ["h", "B1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["o"]),
        helper.make_node("Add", ["o", "B2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    sample = rng.standard_normal(64).astype(np.float32)
    return json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": sample.tolist()}]}
    ).encode()


@dataclass
class Proc:
    """A child process and the port it logged."""

    popen: subprocess.Popen[str]
    port: int
    grpc_port: int = -1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        """CPU seconds of the process and its children still running (the gateway's shadow process)."""
        total = 0.0
        for pid in [self.popen.pid, *_children(self.popen.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@contextmanager
def spawn(args: list[str]) -> Iterator[Proc]:
    """``python -m inference_worker <args>`` until it logs 'listening http=host:port'."""
    popen = subprocess.Popen(
        [sys.executable, "-m", "inference_worker", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert popen.stderr is not None
        port, grpc_port = 0, -1
        for line in popen.stderr:
            found = re.search(r"listening http=[^:\s]+:(\d+)(?: grpc=[^:\s]+:(-?\d+))?", line)
            if found:
                port, grpc_port = int(found.group(1)), int(found.group(2) or -1)
                break
        if not port:
            raise RuntimeError(f"{args[0]} did not start (exit {popen.wait()})")
        drain = subprocess.Popen(["cat"], stdin=popen.stderr, stdout=subprocess.DEVNULL)
        yield Proc(popen, port, grpc_port)
    finally:
        popen.terminate()
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
        if "drain" in locals():
            drain.wait(10)


def wait_http(url: str, path: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} not ready within {timeout:g} s")


def routing_table(w1: Proc, w2: Proc) -> dict[str, Any]:
    """The table the gateway serves from, built with the platform's contract."""
    from inference_worker.contracts.routing import (
        DeploymentRecord,
        ReplicaRecord,
        TableRecord,
        VariantRecord,
        encode_table,
    )

    def variant(name: str, weight: int, worker: Proc, shadow: float = 0.0) -> VariantRecord:
        replica = ReplicaRecord(url=worker.url, id=worker.port, version="1")
        return VariantRecord(
            name=name,
            model_name="mlp",
            version="1",
            weight=weight,
            shadow_percent=shadow,
            replicas=(replica,),
        )

    table = TableRecord(
        version=1,
        generated_at=datetime.datetime.now(datetime.UTC).isoformat(),
        deployments={
            "mlp": DeploymentRecord(model="mlp", variants=(variant("a", 100, w1),)),
            "split": DeploymentRecord(model="mlp", variants=(variant("a", 50, w1), variant("b", 50, w2))),
            # every request answered by worker 1 is copied to worker 2 and compared
            "mirrored": DeploymentRecord(
                model="mlp", variants=(variant("a", 100, w1), variant("s", 0, w2, shadow=100.0))
            ),
        },
    )
    return encode_table(table)


# -- load ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: dict[str, float]
    """CPU microseconds per request, by process."""
    batch: float
    """Mean batch size the workers ran during the cell."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def load(url: str, body: bytes, concurrency: int, seconds: float, procs: dict[str, Proc]) -> Cell:
    """One cell with h2load; the processes' CPU and the workers' batches over its measured window."""
    names = list(procs)

    def counters() -> tuple[float, ...]:
        return (*(procs[name].cpu_s() for name in names), *_batches(procs))

    result = h2load_http(url, body, concurrency, seconds, counter=counters)
    *cpu_s, rows, runs = result.counted
    n = result.requests
    cpu = {name: spent / max(n, 1) * 1e6 for name, spent in zip(names, cpu_s, strict=True)}
    return Cell(
        n, result.seconds, result.p50_ms, result.p99_ms, result.errors, cpu, rows / runs if runs else 0.0
    )


def _batches(procs: dict[str, Proc]) -> tuple[float, float]:
    """Rows and batches the workers have run (their kiln_worker_batch_size histogram)."""
    import httpx

    rows = runs = 0.0
    for name, proc in procs.items():
        if name.startswith("worker"):
            text = httpx.get(proc.url + "/metrics", timeout=10).text
            rows += sum(
                float(v) for v in re.findall(r"^kiln_worker_batch_size_sum\{[^}]*\} (\S+)$", text, re.M)
            )
            runs += sum(
                float(v) for v in re.findall(r"^kiln_worker_batch_size_count\{[^}]*\} (\S+)$", text, re.M)
            )
    return rows, runs


# -- upstream clients (run in a fresh process each: ``gateway_bench.py client NAME URL``) ---------
async def _client_run(name: str, url: str, body: bytes, n: int, seconds: float) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    path = "/v2/models/mlp/infer"
    headers = {"Content-Type": "application/json"}
    if name == "httpx":
        import httpx

        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=30)

        async def post() -> None:
            (await client.post(url + path, content=body, headers=headers)).read()

        close: Any = client.aclose
    elif name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

        async def post() -> None:
            async with session.post(url + path, data=body, headers=headers) as response:
                await response.read()

        close = session.close
    else:
        from inference_worker.gateway.proxy import PoolLimits, Upstreams

        loop = asyncio.get_running_loop()
        pool = Upstreams(PoolLimits(max_connections=64), 30.0, loop).pool(url, host, int(port))
        head = b"POST %s HTTP/1.1\r\nContent-Length: %d\r\nContent-Type: application/json\r\n" % (
            path.encode(),
            len(body),
        )

        async def post() -> None:
            future: asyncio.Future[object] = loop.create_future()
            pool.request(head, body, future.set_result, loop.time() + 30)
            await future

        async def close() -> None:
            pool.close()

    for _ in range(200):
        await post()
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        await post()
        latencies.append(time.perf_counter() - started)
    done = 0
    stop = time.perf_counter() + seconds

    async def loop_posts() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await post()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop_posts() for _ in range(64)))
    rate = done / (time.perf_counter() - started)
    await close()
    return {"p50_ms": statistics.median(latencies) * 1000, "rate": rate}


def clients(url: str, body_file: Path, quick: bool) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in ("httpx", "aiohttp", "gateway pool"):
        command = [sys.executable, __file__, "client", name, url, str(body_file), "1000" if quick else "3000"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
        if done.returncode == 0:
            out[name] = json.loads(done.stdout.splitlines()[-1])
        else:
            print(f"client {name}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return out


# -- the run ------------------------------------------------------------------------------------
NOTES = (
    "### Reading it",
    "",
    "- The added latency at c=1 is two loopback hops and about a tenth of a millisecond of the gateway's "
    "CPU: within the budget. httpx costs a couple of milliseconds per request and aiohttp a few hundred "
    "microseconds, so the gateway uses its own pool of keep-alive connections on asyncio protocols with "
    "httptools' response parser, driven by callbacks (no task, future or timer per request).",
    "- At c=64 the gateway's CPU per request (the CPU columns) comes from the same two cores as the "
    "worker's and the load client's. On a quiet machine there is room for it; under other load it is "
    "taken from the worker, which, fed a little later, forms smaller batches (see 'worker batch'), and "
    "the ratio falls: read it together with the load average above. About 4 syscalls and ~40 µs of "
    "Python per proxied request remain.",
    "- The 50/50 split runs two workers on the same two cores: each forms half-size batches, so it measures "
    "co-location, not the split.",
    "- Beyond one process: a gateway process serves at most about 1/(its CPU per request) requests a "
    "second; deploy it on cores (or a host) of its own and run more of them behind one address. Further: "
    "several requests per upstream write, or a native data path for the hop (Unix sockets to a co-located "
    "worker instead of loopback TCP were tried by hand on 2026-12-06: 0.90 of direct against 0.96, no gain).",
    "- Shadow copies are sent and compared by a child process at the lowest CPU priority; the gateway "
    "only writes each copy to it. `mirrored` copies every request to worker 2 (a 100% shadow): on two "
    "shared cores the copies' work competes with the live path, so its cost shows here, not in tests.",
)
CELLS = (
    ("direct", "c1"),
    ("gateway", "c1"),
    ("split", "c1"),
    ("mirrored", "c1"),
    ("direct", "c64"),
    ("gateway", "c64"),
    ("split", "c64"),
)


def run(quick: bool, worker_args: list[str]) -> None:
    import redis

    rounds, seconds = (3, 1.0) if quick else (8, 2.0)
    load_before = os.getloadavg()
    key = f"kiln-bench:{uuid.uuid4().hex[:8]}:routing"
    client = redis.Redis.from_url(REDIS_URL)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        body = build_mlp(Path(tmp) / "mlp.onnx")
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        serve = [
            "serve",
            "--model-name",
            "mlp",
            "--model-path",
            str(Path(tmp) / "mlp.onnx"),
            "--http-port",
            "0",
            "--grpc-port",
            "-1",
        ]
        w1, w2 = stack.enter_context(spawn(serve)), stack.enter_context(spawn(serve))
        for worker in (w1, w2):
            wait_http(worker.url, "/v2/health/ready")
        client.set(key, json.dumps(routing_table(w1, w2)))
        stack.callback(client.delete, key, f"{key}:stats")
        gateway = stack.enter_context(
            spawn(
                [
                    "gateway",
                    "--port",
                    "0",
                    "--grpc-port",
                    "-1",
                    "--redis-url",
                    REDIS_URL,
                    "--routing-key",
                    key,
                ]
            )
        )
        wait_http(gateway.url, "/v2/health/ready")
        procs = {"gateway": gateway, "worker 1": w1, "worker 2": w2}
        urls = {
            "direct": w1.url + "/v2/models/mlp/infer",
            "gateway": gateway.url + "/v2/models/mlp/infer",
            "split": gateway.url + "/v2/models/split/infer",
            "mirrored": gateway.url + "/v2/models/mirrored/infer",
        }
        print("upstream clients ...", flush=True)
        client_results = clients(w1.url, body_file, quick)
        for target in urls:  # warm-up: every connection opened
            load(urls[target], body, 64, 1, procs)
        cells: dict[tuple[str, str], list[Cell]] = {cell: [] for cell in CELLS}
        for index in range(rounds):
            for target, conc in CELLS:
                cells[target, conc].append(load(urls[target], body, int(conc[1:]), seconds, procs))
            print(f"round {index + 1}/{rounds} done", flush=True)
    client.close()
    report(cells, client_results, rounds, seconds, load_before, quick, worker_args)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    cells: dict[tuple[str, str], list[Cell]],
    client_results: dict[str, dict[str, float]],
    rounds: int,
    seconds: float,
    load_before: tuple[float, float, float],
    quick: bool,
    worker_args: list[str],
) -> None:
    rows = []
    for (target, conc), runs in cells.items():
        cpu = {name: _median([r.cpu_us[name] for r in runs]) for name in runs[0].cpu_us}
        rows.append(
            f"| {target} | {conc[1:]} | {_median([r.rate for r in runs]):,.0f} "
            f"| {_median([r.p50_ms for r in runs]):.3f} "
            f"| {_median([r.p99_ms for r in runs]):.2f} | {sum(r.errors for r in runs)} "
            f"| {_median([r.batch for r in runs]):.1f} "
            f"| {cpu['gateway']:.0f} | {cpu['worker 1']:.0f} | {cpu['worker 2']:.0f} |"
        )
    added = [g.p50_ms - d.p50_ms for d, g in zip(cells["direct", "c1"], cells["gateway", "c1"], strict=True)]
    ratio64 = [g.rate / d.rate for d, g in zip(cells["direct", "c64"], cells["gateway", "c64"], strict=True)]
    ratio1 = [g.rate / d.rate for d, g in zip(cells["direct", "c1"], cells["gateway", "c1"], strict=True)]
    split64 = [s.rate / d.rate for d, s in zip(cells["direct", "c64"], cells["split", "c64"], strict=True)]
    mirrored = [
        m.p50_ms / g.p50_ms for g, m in zip(cells["gateway", "c1"], cells["mirrored", "c1"], strict=True)
    ]
    gw_cpu = _median([r.cpu_us["gateway"] for r in cells["gateway", "c64"]])
    wk_cpu = _median([r.cpu_us["worker 1"] for r in cells["direct", "c64"]])
    load_after = os.getloadavg()
    versions = ", ".join(
        f"{m} {package_version(m)}"
        for m in ("onnxruntime", "numpy", "orjson", "httptools", "uvloop", "redis")
    )
    lines = [
        START,
        "## Gateway",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC "
        f"on {cpu_name()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; {versions}.",
        f"Command: `python bench/gateway_bench.py{' --quick' if quick else ''}` "
        "(MLP 64->256->10, JSON bodies; "
        "two workers with default options, the gateway with default options; "
        f"h2load (HTTP/1.1), {rounds} rounds of "
        f"{seconds:g} s per cell, cells round-robin in each round; medians over rounds). "
        f"Load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f} "
        '(the benchmark itself raises it; a higher "before" means other jobs shared the machine).',
        "",
        "### Targets",
        "",
        f"- Added p50 at c=1: **{_median(added):+.3f} ms** (median of per-round differences; "
        f"target at most +0.3 ms; per round: {', '.join(f'{a:+.3f}' for a in added)}).",
        f"- Req/s through the gateway at c=64: **{_median(ratio64):.2f}** of direct (target at least 0.85; "
        f"per round: {', '.join(f'{r:.2f}' for r in ratio64)}); at c=1: {_median(ratio1):.2f}.",
        f"- 50/50 split over two workers at c=64: {_median(split64):.2f} of one worker direct.",
        f"- A 100% shadow at c=1: client p50 **{_median(mirrored):.2f}x** that without one (target at most "
        f"1.10; per round: {', '.join(f'{r:.2f}' for r in mirrored)}).",
        f"- CPU per request at c=64: gateway {gw_cpu:.0f} µs, worker {wk_cpu:.0f} µs (direct); "
        f"one gateway process tops out near {1e6 / max(gw_cpu, 1):,.0f} req/s at that cost.",
        "",
        "### Cells",
        "",
        "| path | c | req/s | p50 ms | p99 ms | errors | worker batch "
        "| gateway CPU µs/req | worker 1 CPU µs/req | worker 2 CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "### Upstream clients (chosen by measurement)",
        "",
        "Each in a fresh process against worker 1 directly: "
        "p50 of sequential requests, and req/s with 64 in flight.",
        "",
        "| client | p50 ms c=1 | req/s c=64 |",
        "|---|---:|---:|",
        *(f"| {name} | {r['p50_ms']:.3f} | {r['rate']:,.0f} |" for name, r in client_results.items()),
        "",
        *NOTES,
        "",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    write_section(section, START, END)


def main() -> None:
    sys.path.insert(0, str(ROOT))  # the platform's contracts (the routing table) and the worker's package
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        _, _, name, url, body_file, n = sys.argv
        import uvloop

        result = uvloop.run(_client_run(name, url, Path(body_file).read_bytes(), int(n), 2.0))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s per cell")
    parser.add_argument(
        "--worker-args", default=WORKER_ARGS, help=f"options of both workers [default: {WORKER_ARGS!r}]"
    )
    args = parser.parse_args()
    run(args.quick, shlex.split(args.worker_args))


if __name__ == "__main__":
    main()
