"""Benchmark: what system shared memory saves a same-host client, against the tensor in the message.

    python bench/shm_bench.py            # 3 rounds of 2 s per cell, about 4 minutes
    python bench/shm_bench.py --quick    # 1 round of 1 s per cell, about a minute

Needs ``h2load`` (Debian: apt-get install nghttp2-client), which drives HTTP and gRPC alike.
For each model of ``worker_models.py`` it runs (the CNN, and ``pool``: the CNN's 3x64x64 FP32
input with next to no compute, so its rows are what moving 49,152 bytes costs) it starts one worker
(``--system-shared-memory on``, otherwise its defaults), creates a POSIX shared memory object
holding the sample, registers it, and loads the worker the same way for each cell, round-robin:
HTTP with the tensor in the body (JSON, binary extension) or named by region, gRPC with
``raw_input_contents`` or named by region; outputs come back in the answer (10 floats), or into
the region too. Each cell keeps its best round, with the worker's CPU time per request in it.
Prints the table and rewrites the shared memory section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]

from results_md import cpu_name, markers, package_version, write_section  # noqa: E402
from worker_bench import free_port, started, worker_command  # noqa: E402
from worker_load import LoadResult, h2load_grpc, h2load_http  # noqa: E402
from worker_models import BenchModel, build, grpc_framed  # noqa: E402

START, END = markers("shm")
REGION: dict[str, object] = {"shared_memory_region": "in"}


@dataclass(frozen=True)
class Cell:
    """One way of sending the sample: its label, protocol and message."""

    label: str
    protocol: str
    body: bytes
    header_length: int | None = None


@dataclass(frozen=True)
class Target:
    """The worker under test: its model, addresses and process id."""

    model: BenchModel
    url: str
    grpc: str
    pid: int

    def cpu(self) -> tuple[float]:
        """The worker's user and system CPU seconds so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return ((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),)


def _size(model: BenchModel) -> int:
    return int(np.prod(model.sample_shape)) * 4


def _shm_header(model: BenchModel, output_to_region: bool) -> bytes:
    tensor = {"name": "input", "shape": [1, *model.sample_shape], "datatype": "FP32"}
    output: dict[str, object] = {"name": "output", "parameters": {"binary_data": True}}
    if output_to_region:
        output["parameters"] = {"shared_memory_region": "out", "shared_memory_byte_size": 40}
    parameters: dict[str, object] = {**REGION, "shared_memory_byte_size": _size(model)}
    inputs = [{**tensor, "parameters": parameters}]
    return json.dumps({"inputs": inputs, "outputs": [output]}).encode()


def _shm_grpc(model: BenchModel) -> bytes:
    from inference_worker import build_protos

    pb2, _ = build_protos.load()
    request = pb2.ModelInferRequest(model_name=model.name)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, *model.sample_shape])
    tensor.parameters["shared_memory_region"].string_param = "in"
    tensor.parameters["shared_memory_byte_size"].int64_param = _size(model)
    return grpc_framed(request)


def cells(model: BenchModel) -> list[Cell]:
    return [
        Cell("HTTP, JSON", "http", model.json_body),
        Cell("HTTP, binary extension", "http", model.binary_body, model.binary_header_length),
        Cell("HTTP, input in shared memory", "http", _shm_header(model, False)),
        Cell("HTTP, input and output in shared memory", "http", _shm_header(model, True)),
        Cell("gRPC, raw_input_contents", "grpc", model.grpc_message),
        Cell("gRPC, input in shared memory", "grpc", _shm_grpc(model)),
    ]


def run(cell: Cell, target: Target, concurrency: int, seconds: float) -> tuple[LoadResult, float]:
    """One load run, and the worker's CPU microseconds per answered request over the measured window."""
    if cell.protocol == "grpc":
        result = h2load_grpc(target.grpc, "ModelInfer", cell.body, concurrency, seconds, target.cpu)
    else:
        headers = {"Content-Type": "application/octet-stream"}
        if cell.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(cell.header_length)
        url = f"{target.url}/v2/models/{target.model.name}/infer"
        result = h2load_http(url, cell.body, concurrency, seconds, headers, target.cpu)
    return result, result.counted[0] / max(result.requests, 1) * 1e6


def register(target: Target, key: str) -> None:
    """The sample and room for an answer, as a client creates them (``shm_open`` + write)."""
    model = target.model
    sample = np.random.default_rng(0).standard_normal((1, *model.sample_shape)).astype(np.float32)
    Path("/dev/shm", key).write_bytes(sample.tobytes() + bytes(64))
    for name, offset, size in (("in", 0, sample.nbytes), ("out", sample.nbytes, 64)):
        body = {"key": "/" + key, "offset": offset, "byte_size": size}
        url = f"{target.url}/v2/systemsharedmemory/region/{name}/register"
        httpx.post(url, json=body, timeout=10).raise_for_status()
    url = f"{target.url}/v2/models/{model.name}/infer"
    answer = httpx.post(url, content=_shm_header(model, False), timeout=30).raise_for_status()
    assert answer.headers["content-type"] == "application/octet-stream", answer.text


Measured = tuple[str, Cell, int, LoadResult, float]
"""(model, cell, concurrency, best round, worker CPU µs per request in that round)."""


def measure(target: Target, args: argparse.Namespace) -> list[Measured]:
    rows: list[Measured] = []
    for concurrency in args.concurrency:
        todo = cells(target.model)
        best: dict[int, tuple[LoadResult, float]] = {}
        for round_ in range(args.rounds):
            for index, cell in enumerate(todo):
                if round_ == 0:
                    run(cell, target, concurrency, 1.0)  # warm-up
                result, cpu_us = run(cell, target, concurrency, args.seconds)
                if result.errors:
                    raise RuntimeError(f"{cell.label} at c={concurrency}: {result.errors} failed requests")
                if index not in best or result.rate > best[index][0].rate:
                    best[index] = (result, cpu_us)
        for index, cell in enumerate(todo):
            rows.append((target.model.name, cell, concurrency, *best[index]))
            print(line(rows[-1], rows), flush=True)
    return rows


def line(row: Measured, rows: list[Measured]) -> str:
    """A table row; the ratio compares with the same protocol's tensor-in-the-message cell."""
    model, cell, concurrency, result, cpu_us = row
    base = next(
        (
            r
            for m, c, k, r, _ in rows
            if (m, k, c.protocol) == (model, concurrency, cell.protocol) and "JSON" not in c.label
        ),
        result,
    )
    ratio = result.rate / base.rate if base.rate else 0.0
    return (
        f"| {model} | {cell.label} | {concurrency} | {len(cell.body):,} | {result.rate:,.0f} | "
        f"{result.p50_ms:.3f} | {result.p99_ms:.3f} | {cpu_us:,.0f} | {ratio:.2f} |"
    )


HEADER = (
    "| model | request | c | bytes sent | req/s | p50 ms | p99 ms | worker CPU µs/req | req/s vs the "
    "tensor in the message |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


def read_cost(model: BenchModel, key: str, repeat: int = 2000) -> float:
    """Microseconds the worker spends reading the sample from its region (``SharedMemory.read``)."""
    from inference_worker.config import SharedMemoryConfig
    from inference_worker.shm import SharedMemory
    from inference_worker.tensor_codec import DATATYPES

    shm = SharedMemory(SharedMemoryConfig(enabled=True))
    shape, count = (1, *model.sample_shape), int(np.prod(model.sample_shape))
    shm.register(name="in", key="/" + key, offset=0, byte_size=count * 4)
    window = shm.window("input", {**REGION, "shared_memory_byte_size": count * 4})
    assert window is not None
    started_at = time.perf_counter()
    for _ in range(repeat):
        shm.read("input", window, DATATYPES["FP32"], shape, count)
    return (time.perf_counter() - started_at) / repeat * 1e6


def section(rows: list[Measured], command: str, read_us: float) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            START,
            "## System shared memory (same host)",
            "",
            f"`{command}` on {cpu_name()}, {os.cpu_count()} cores, {when} (load average "
            f"{os.getloadavg()[0]:.1f} at the end); onnxruntime {package_version('onnxruntime')}. One "
            "worker per model with `--system-shared-memory on`, its other options the defaults. `cnn` is "
            "the CNN of `worker_models.py`; `pool` takes the same 3x64x64 FP32 input (49,152 bytes) and "
            "averages it, so its rows are what moving the tensor costs. Best round per cell; the CPU "
            "column is the worker process's user and system time over that round's requests.",
            "",
            HEADER,
            *(line(row, rows[: i + 1]) for i, row in enumerate(rows)),
            "",
            f"The worker reads the input from its region with one `preadv`: {read_us:.1f} µs for the "
            "48 KiB sample (measured in-process), instead of the tensor crossing the socket and the HTTP "
            "or gRPC framing; what is left is the model's run and the protocol's per-request cost.",
            END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 1 s per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--models", nargs="+", default=["cnn", "pool"], choices=["cnn", "pool"])
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    args.seconds, args.rounds = (1.0, 1) if args.quick else (2.0, 3)
    key = f"kiln-bench-{os.getpid()}"
    rows: list[Measured] = []
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        stack.callback(lambda: Path("/dev/shm", key).unlink(missing_ok=True))
        for name in args.models:
            model = build(name, Path(tmp))
            port, grpc_port = free_port(), free_port()
            argv = worker_command(model, port, grpc_port, ["--system-shared-memory", "on"])
            with started(name, argv, "/v2/health/ready", port) as server:
                target = Target(model, server.url, f"127.0.0.1:{grpc_port}", server.process.pid)
                register(target, key)
                rows += measure(target, args)
        read_us = read_cost(model, key)
    print(f"reading the input from the region in the worker: {read_us:.1f} us")
    if not args.no_write:
        command = "python bench/shm_bench.py" + (" --quick" if args.quick else "")
        write_section(section(rows, command, read_us), START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
