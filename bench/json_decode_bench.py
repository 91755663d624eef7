"""Benchmark: the CPU one v2 JSON body costs the worker to decode, orjson alone against json_body.

    python bench/json_decode_bench.py            # 7 rounds, about 20 s
    python bench/json_decode_bench.py --quick    # 3 rounds, a few seconds

Each body is what ``worker_models.py`` sends (``json.dumps`` of a float32 sample, flat), or the
same sample nested as ``array.tolist()`` writes it, decoded the way the worker's HTTP route does
it: the body parsed, then ``decode_json_inputs``. "orjson": ``orjson.loads`` of the whole body
(the path before issue 19, and still the path for small data); "json_body": ``json_body.loads``,
which parses large numeric data, flat or regularly nested, with simdjson into a buffer. The two
alternate within each round; each cell keeps its best round (the least disturbed by other load
on the machine). Prints the table and rewrites the JSON decode
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]

from results_md import cpu_name, markers, package_version, write_section  # noqa: E402

from inference_worker import json_body  # noqa: E402
from inference_worker.config import Limits  # noqa: E402
from inference_worker.tensor_codec import decode_json_inputs  # noqa: E402

START, END = markers("json-decode")
LIMITS = Limits()
CELLS = [
    ("CNN input 1x3x64x64 FP32", (1, 3, 64, 64), False),
    ("CNN input, nested lists", (1, 3, 64, 64), True),
    ("1x1024 FP32", (1, 1024), False),
    ("MLP input 1x64 FP32", (1, 64), False),
]


def body(shape: tuple[int, ...], nested: bool) -> bytes:
    sample = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    data = sample.tolist() if nested else sample.reshape(-1).tolist()
    tensor = {"name": "input", "shape": list(shape), "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def decoder(loads: Callable[[bytes], Any]) -> Callable[[bytes], dict[str, np.ndarray]]:
    return lambda raw: decode_json_inputs(loads(raw)["inputs"], None, LIMITS)


def per_body_us(decode: Callable[[bytes], object], raw: bytes, seconds: float) -> float:
    """Mean microseconds per decode over about ``seconds``."""
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(10):
            decode(raw)
        count += 10
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    rounds, seconds = (3, 0.2) if args.quick else (7, 0.5)
    old, new = decoder(orjson.loads), decoder(json_body.loads)
    rows = []
    for label, shape, nested in CELLS:
        raw = body(shape, nested)
        a, b = old(raw)["input"], new(raw)["input"]
        if (a.dtype, a.shape, a.tobytes()) != (b.dtype, b.shape, b.tobytes()):
            raise SystemExit(f"{label}: json_body decoded another tensor than orjson")
        best_old = best_new = float("inf")
        for _ in range(rounds):
            best_old = min(best_old, per_body_us(old, raw, seconds))
            best_new = min(best_new, per_body_us(new, raw, seconds))
        rows.append((label, len(raw), best_old, best_new))
    lines = [
        "| body | bytes | orjson + fromiter (µs) | json_body (µs) | speed-up |",
        "|---|---:|---:|---:|---:|",
        *(f"| {label} | {size:,} | {o:.1f} | {n:.1f} | {o / n:.2f}x |" for label, size, o, n in rows),
    ]
    print("\n".join(lines))
    if args.no_write:
        return
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/json_decode_bench.py" + (" --quick" if args.quick else "")
    section = "\n".join(
        [
            START,
            "## JSON decode (one body, one core)",
            "",
            f"`{command}` on {cpu_name()}, {os.cpu_count()} cores, {when} (load average "
            f"{os.getloadavg()[0]:.1f} at the end); orjson {package_version('orjson')}, pysimdjson "
            f"{package_version('pysimdjson')}, numpy {package_version('numpy')}. Best of {rounds} "
            "alternating rounds per cell; the worker decodes on its event loop, so this is CPU "
            "each request holds the loop for. Bodies under 8 KB stay with orjson; both columns check that "
            "every value is a number.",
            "",
            *lines,
            END,
        ]
    )
    write_section(section, START, END)


if __name__ == "__main__":
    main()
