"""Rows, tables and the worker section of bench/RESULTS.md for worker_bench.py."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from worker_load import LoadResult

from inference_worker.host import cpu_model

RAW = "raw ONNX Runtime (1 session x 2 threads)"
RAW_TUNED = "raw ONNX Runtime (2 sessions x 1 thread)"
TUNED = ["--instances", "2", "--intra-op-threads", "1"]
"""One single-threaded session per core: the worker's best CPU configuration on this machine."""
TUNED_LABEL = "worker " + " ".join(TUNED)
START = "<!-- worker-bench:start -->"
END = "<!-- worker-bench:end -->"


@dataclass(frozen=True)
class Row:
    """One measured cell."""

    model: str
    server: str
    protocol: str
    concurrency: int
    result: LoadResult
    mean_batch: float | None

    def line(self) -> str:
        batch = "" if self.mean_batch is None else f"{self.mean_batch:.1f}"
        r = self.result
        return (
            f"| {self.model} | {self.server} | {self.protocol} | {self.concurrency} | {r.rate:,.0f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.1f} | {batch} | {r.errors} |"
        )


class PlanLike(Protocol):
    model: Any
    rows: list[Row]


HEADER = (
    "| model | server | protocol | c | req/s | p50 ms | p99 ms | mean batch | errors |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|"
)


def _find(rows: Sequence[Row], server: str, protocol: str, concurrency: int) -> Row | None:
    return next(
        (r for r in rows if r.server == server and r.protocol == protocol and r.concurrency == concurrency),
        None,
    )


def _raw_at(rows: Sequence[Row], batch: float, label: str) -> Row:
    raws = [r for r in rows if r.server == label]
    return min(raws, key=lambda r: abs(r.concurrency - batch))


def _decode_ms(body: bytes) -> float:
    """The worker's own JSON decode of one body (``json_body.loads``, then the tensors), best of 20, in ms."""
    from inference_worker import json_body
    from inference_worker.config import Limits
    from inference_worker.tensor_codec import decode_json_inputs

    limits, best = Limits(), float("inf")
    for _ in range(20):
        started = time.perf_counter()
        decode_json_inputs(json_body.loads(body)["inputs"], None, limits)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _worker_summary(rows: Sequence[Row], name: str, worker: str, raw_label: str) -> list[str]:
    out = []
    json64, bin64 = _find(rows, worker, "HTTP JSON", 64), _find(rows, worker, "HTTP binary", 64)
    json1, floor1 = (
        _find(rows, worker, "HTTP JSON", 1),
        _find(rows, "FastAPI, one run per request", "HTTP JSON", 1),
    )
    peers = [r for r in rows if r.server.startswith("FastAPI") and r.concurrency == 64]
    if json64 and peers:
        best = max(peers, key=lambda r: r.result.rate)
        out.append(
            f"- {name}, {worker}, c=64 JSON: {json64.result.rate:,.0f} req/s = "
            f"**{json64.result.rate / best.result.rate:.2f}x** the best peer ({best.server}, "
            f"{best.result.rate:,.0f} req/s); p99 {json64.result.p99_ms:.0f} ms "
            f"vs {best.result.p99_ms:.0f} ms."
        )
    for row in (json64, bin64) if name == "cnn" else ():
        if row and row.mean_batch:
            raw = _raw_at(rows, row.mean_batch, raw_label)
            out.append(
                f"- {name}, {worker}, c=64 {row.protocol}: **{row.result.rate / raw.result.rate:.2f}** of "
                f"{raw_label} at batch {raw.concurrency} ({raw.result.rate:,.0f} samples/s; "
                f"the worker formed batches of {row.mean_batch:.1f} on average)."
            )
    if json1 and floor1:
        raw1 = _raw_at(rows, 1, raw_label)
        out.append(
            f"- {name}, {worker}, c=1 JSON: {json1.result.rate:,.0f} req/s = "
            f"**{json1.result.rate / floor1.result.rate:.2f}x** the one-run-per-request floor "
            f"({floor1.result.rate:,.0f}); p50 {json1.result.p50_ms:.2f} ms vs raw batch-1 "
            f"{raw1.result.p50_ms:.2f} ms ({json1.result.p50_ms - raw1.result.p50_ms:+.2f} ms, "
            "zero queue delay)."
        )
    return out


def summary(plan: PlanLike) -> list[str]:
    """The target checks of ../shared/performance.md and the issue, as sentences with numbers."""
    rows, name, out = plan.rows, plan.model.name, []
    for worker, raw_label in (("worker", RAW), (TUNED_LABEL, RAW_TUNED)):
        out += _worker_summary(rows, name, worker, raw_label)
    json64 = _find(rows, "worker", "HTTP JSON", 64)
    if json64 and name == "cnn":
        decode, raw = _decode_ms(plan.model.json_body), _raw_at(rows, json64.mean_batch or 1, RAW)
        compute = 2 * 1000 / raw.result.rate  # core-ms per sample: two intra-op threads
        out.append(
            f"- Profile, {name} JSON: decoding one {len(plan.model.json_body) / 1000:.0f} KB body costs "
            f"{decode:.2f} ms of the event loop's core (the worker's decoder, measured here), inference "
            f"{compute:.2f} core-ms per sample: on two shared cores JSON can reach at most about "
            f"{compute / (compute + decode):.2f} of raw, before HTTP and the load client take their share."
        )
    if name == "mlp" and (json64 := _find(rows, "worker", "HTTP JSON", 64)):
        out.append(f"- {name}, worker, c=64 JSON: {json64.result.rate:,.0f} req/s (target: at least 5,300).")
    return out


def _comparison(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| model | protocol | req/s c=1 | p50 ms c=1 | req/s c=64 | p99 ms c=64 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r.model for r in rows):
        for protocol in ("HTTP JSON", "HTTP binary", "gRPC unary", "gRPC stream"):
            one = _find([r for r in rows if r.model == name], "worker", protocol, 1)
            many = _find([r for r in rows if r.model == name], "worker", protocol, 64)
            if one and many:
                lines.append(
                    f"| {name} | {protocol} | {one.result.rate:,.0f} | {one.result.p50_ms:.2f} | "
                    f"{many.result.rate:,.0f} | {many.result.p99_ms:.1f} |"
                )
    return lines


def _machine() -> str:
    packages = ", ".join(
        f"{p} {version(p)}"
        for p in ("onnxruntime", "numpy", "orjson", "grpcio", "uvicorn", "fastapi", "uvloop")
    )
    return f"{cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; {packages}"


def write_results(path: Path, plans: Sequence[PlanLike], **context: Any) -> None:
    """Print the tables and rewrite the worker's section of RESULTS.md (other sections are kept)."""
    rows = [row for plan in plans for row in plan.rows]
    started: datetime.datetime = context["started"]
    (before, after) = context["load"]
    body = [
        START,
        "## Inference worker",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {_machine()}.",
        f"Command: `{context['command']}` (each cell: best of {context['rounds']} rounds of "
        f"{context['seconds']:.0f} s, servers measured round-robin, after a warm-up; "
        "h2load for HTTP/1.1 and gRPC unary alike, a grpc.aio client for streaming). "
        f"Load average before/after: {before[0]:.2f}/{after[0]:.2f} "
        '(the benchmark itself raises it; a higher "before" means other jobs shared the machine: '
        "compare rows of one run, not runs).",
        "",
        "### Targets",
        "",
        *[line for plan in plans for line in summary(plan)],
        "",
        "### REST vs gRPC (worker)",
        "",
        *_comparison(rows),
        "",
        "### All cells",
        "",
        HEADER,
        *[row.line() for row in rows],
        "",
        END,
    ]
    text = "\n".join(body) + "\n"
    print(text)
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if START in old and END in old:
        new = old[: old.index(START)] + text + old[old.index(END) + len(END) + 1 :]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)
