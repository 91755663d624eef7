"""The "peers" section of bench/RESULTS.md and the peer rows of README.md, for peer_bench.py."""

from __future__ import annotations

import datetime
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results_md import RESULTS, cpu_name, markers, package_version, write_section
from worker_report import HEADER, RAW, Row

START, END = markers("peer")
README = Path(__file__).resolve().parent.parent / "README.md"
JSON, BINARY, GRPC = "HTTP JSON", "HTTP binary", "gRPC unary"
WORKER, TRITON = "worker", "Triton (PyTriton)"
PEER_PACKAGES = {TRITON: ("nvidia-pytriton", "onnxruntime"), "TorchServe": ("torchserve", "onnxruntime")}
NOTES = (
    "### Reading it",
    "",
    "- One load generator for every server and protocol: h2load, HTTP/1.1 with one request in flight per",
    "  connection, gRPC unary over up to 8 HTTP/2 connections sharing the streams in flight. The bodies are",
    "  those of worker_models.py (the JSON a client's `json.dumps(array.tolist())` writes; the binary",
    "  tensor extension with a binary output; gRPC with raw contents).",
    "- Triton runs through PyTriton: Triton's C++ front ends parse JSON and the binary extension and run its",
    "  dynamic batcher (max batch 32, no queue delay: the worker's defaults); the batch then goes to a",
    "  Python callable (ONNX Runtime, 2 intra-op threads) through PyTriton's proxy. A Triton with its own",
    "  ONNX Runtime backend would skip that hop; PyTriton is the Triton a pip install gives.",
    "- TorchServe and the FastAPI servers speak HTTP JSON only (no binary extension, no v2 gRPC service);",
    "  TorchServe decodes each body with the standard library before the handler stacks the batch.",
    "  h2load cannot read TorchServe's status line (`HTTP/1.1 200 ` with an empty reason phrase): it",
    "  counts every TorchServe answer under 'errors' though each is complete (its latency is logged) and",
    "  the answer checked before the cell is a 200 with the model's output; its req/s are completed answers.",
    "- On a 2-core machine the load generator and the server share the cores: compare rows of one run.",
)


@dataclass
class Context:
    """How the run was made: printed in the section's header."""

    command: str
    started: datetime.datetime
    load_before: float
    seconds: float
    rounds: int
    pythons: dict[str, str]
    versions: dict[str, Any] = field(default_factory=dict)


def _find(rows: Sequence[Row], model: str, server: str, protocol: str, concurrency: int) -> Row | None:
    return next(
        (
            r
            for r in rows
            if (r.model, r.server, r.protocol, r.concurrency) == (model, server, protocol, concurrency)
        ),
        None,
    )


def _raw(rows: Sequence[Row], model: str, batch: int) -> Row | None:
    return next((r for r in rows if r.model == model and r.server == RAW and r.concurrency == batch), None)


def _ratio(value: float) -> str:
    """A ratio as every table here shows it: truncated, so 0.897 reads 0.89, never a "missed" 0.90."""
    return f"{math.floor(value * 100) / 100:.2f}"


def _verdict(value: float, target: float) -> str:
    return f"**{_ratio(value)}x** (target {target:g}: {'met' if value >= target else 'missed'})"


def _targets(rows: Sequence[Row]) -> list[str]:
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        for protocol in (JSON, BINARY, GRPC):
            ours, triton = _find(rows, model, WORKER, protocol, 64), _find(rows, model, TRITON, protocol, 64)
            if ours and triton:
                target = 1.5 if model == "cnn" and protocol != GRPC else 1.0
                out.append(
                    f"- {model} c=64 {protocol}: worker {ours.result.rate:,.0f} req/s / Triton "
                    f"{triton.result.rate:,.0f} = {_verdict(ours.result.rate / triton.result.rate, target)}; "
                    f"p99 {ours.result.p99_ms:.0f} vs {triton.result.p99_ms:.0f} ms."
                )
        raw = _raw(rows, model, 32)
        for protocol in (BINARY, JSON) if model == "cnn" else ():
            ours = _find(rows, model, WORKER, protocol, 64)
            if ours and raw:
                target = 0.9 if protocol == BINARY else 0.0
                batch = f"{ours.mean_batch:.1f}" if ours.mean_batch else "?"
                out.append(
                    f"- {model} c=64 {protocol}: worker / raw ONNX Runtime at batch 32 "
                    f"({raw.result.rate:,.0f} samples/s) = "
                    + (_verdict(ours.result.rate / raw.result.rate, target) if target else
                       f"**{_ratio(ours.result.rate / raw.result.rate)}**")
                    + f"; the worker's mean batch {batch}."
                )  # fmt: skip
        ours, http = _find(rows, model, WORKER, GRPC, 64), _find(rows, model, WORKER, JSON, 64)
        if ours and http:
            out.append(
                f"- {model} c=64, worker gRPC / worker HTTP JSON: "
                f"{_verdict(ours.result.rate / http.result.rate, 1.0)}."
            )
        peers = [
            r for r in rows if r.model == model and r.concurrency == 64 and r.server not in (WORKER, RAW)
        ]
        best = max((r for r in peers if r.protocol == JSON), key=lambda r: r.result.rate, default=None)
        ours = _find(rows, model, WORKER, JSON, 64)
        if model == "mlp" and ours and best:
            out.append(
                f"- {model} c=64 HTTP JSON: worker / the best peer ({best.server}, {best.result.rate:,.0f} "
                f"req/s) = {_verdict(ours.result.rate / best.result.rate, 2.5)}; p99 "
                f"{ours.result.p99_ms:.0f} vs {best.result.p99_ms:.0f} ms."
            )
        ours, floor = (
            _find(rows, model, WORKER, JSON, 1),
            _find(rows, model, "FastAPI, one run per request", JSON, 1),
        )
        if ours and floor:
            out.append(
                f"- {model} c=1 HTTP JSON: worker / one run per request = "
                f"{_verdict(ours.result.rate / floor.result.rate, 1.0)}; p50 {ours.result.p50_ms:.2f} ms."
            )
    return out


def _versions(context: Context) -> str:
    parts = [f"onnxruntime {package_version('onnxruntime')}, numpy {package_version('numpy')} (Kiln's venv)"]
    for peer, python in context.pythons.items():
        script = (
            "from importlib.metadata import version as v; "
            f"print(', '.join(p + ' ' + v(p) for p in {PEER_PACKAGES[peer]!r}))"
        )
        found = subprocess.run([python, "-c", script], capture_output=True, text=True, check=False).stdout
        server = context.versions.get(peer, {})
        extra = f", tritonserver {server['version']}" if "version" in server else ""
        parts.append(f"{peer}: {found.strip()}{extra}")
    return "; ".join(parts)


def _readme_rows(rows: Sequence[Row], context: Context) -> list[str]:
    columns = [(m, p) for m in dict.fromkeys(r.model for r in rows) for p in (JSON, BINARY, GRPC)]
    servers = [s for s in dict.fromkeys(r.server for r in rows if r.concurrency == 64) if s != RAW]
    lines = [
        START,
        f"Peers in one run (`{context.command}`, {context.started:%Y-%m-%d}; h2load for every server and "
        "protocol, c=64, req/s, in brackets the worker's req/s over that server's):",
        "",
        "| c=64 | " + " | ".join(f"{m.upper()} {p.replace('HTTP ', '')}" for m, p in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for server in [*servers, RAW]:
        cells = []
        for model, protocol in columns:
            ours = _find(rows, model, WORKER, protocol, 64)
            row = _raw(rows, model, 32) if server == RAW else _find(rows, model, server, protocol, 64)
            if row is None or (server == RAW and protocol == GRPC):
                cells.append("–")
            elif server == WORKER or ours is None:
                cells.append(f"{row.result.rate:,.0f}")
            else:
                cells.append(f"{row.result.rate:,.0f} ({_ratio(ours.result.rate / row.result.rate)})")
        label = "raw ONNX Runtime, batch 32 (samples/s)" if server == RAW else server
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, END]


def write(rows: Sequence[Row], context: Context) -> None:
    """Print and write the RESULTS.md section and the README rows."""
    missing = [p for p in PEER_PACKAGES if p not in context.pythons]
    lines = [
        START,
        "## Peers: Triton (PyTriton), TorchServe, FastAPI",
        "",
        f"Measured {context.started:%Y-%m-%d %H:%M} UTC on {cpu_name()}, {os.cpu_count()} cores; "
        f"{_versions(context)}. Command: `{context.command}` (each cell {context.seconds:g} s after a "
        "warm-up, "
        f"{context.rounds} round(s), the median kept; every server with 2 ONNX Runtime intra-op threads). "
        f"Load average before/after: {context.load_before:.2f}/{os.getloadavg()[0]:.2f}."
        + (f" Left out (no Python given for them): {', '.join(missing)}." if missing else ""),
        "",
        "### Targets",
        "",
        *_targets(rows),
        "",
        "### Cells",
        "",
        HEADER,
        *[row.line() for row in rows],
        "",
        *NOTES,
        "",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    write_section(section, START, END, RESULTS)
    if START in README.read_text():
        write_section("\n".join(_readme_rows(rows, context)), START, END, README)
