"""Latency of ONNX Runtime (and PyTorch beside it) per batch size. Pure: no Django.

Batch sizes are 1, 2, 4, ... up to the configured maximum (plus the maximum itself
when it is not a power of two), or only the fixed batch size of a model without a
dynamic batch axis. Each size gets one warm-up run and then ``runs`` timed runs;
the report keeps the median and the 90th percentile. The whole profile is
time-boxed: once a single run takes longer than ``slow_run_s``, or the profile has
used up ``budget_s``, no larger batch is tried and a warning says so.

ONNX Runtime sessions are made with intra-op spinning off, so that idle ORT
threads do not steal the CPU from the PyTorch runs measured right after them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from registry.conversion.channel import progress
from registry.conversion.onnx_export import raise_if_out_of_memory
from registry.conversion.parity import Feeds

PROVIDER = "CPUExecutionProvider"
SLOW_RUN_S = 2.0
DEFAULT_BUDGET_S = 120.0


def make_session(path: str, threads: int) -> Any:
    """An ONNX Runtime CPU session with full graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=options, providers=[PROVIDER])


def profile_batch_sizes(max_batch: int, fixed_batch: int | None) -> list[int]:
    """1, 2, 4, ... up to ``max_batch`` (and ``max_batch``), or just the fixed batch size."""
    if fixed_batch is not None:
        return [fixed_batch]
    sizes: list[int] = []
    size = 1
    while size <= max(max_batch, 1):
        sizes.append(size)
        size *= 2
    if sizes[-1] != max(max_batch, 1):
        sizes.append(max_batch)
    return sizes


@dataclass(frozen=True)
class Timing:
    """Milliseconds of one runtime at one batch size."""

    median_ms: float
    p90_ms: float

    @property
    def slowest_s(self) -> float:
        return self.p90_ms / 1000.0


def time_runs(run: Callable[[], object], runs: int, slow_run_s: float = SLOW_RUN_S) -> Timing:
    """One warm-up call, then ``runs`` timed calls (only one when the warm-up was already slow)."""
    start = time.perf_counter()
    run()
    warm_up_s = time.perf_counter() - start
    samples: list[float] = []
    for _ in range(1 if warm_up_s > slow_run_s else max(runs, 1)):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000.0)
    p90 = float(np.percentile(samples, 90)) if len(samples) > 1 else samples[0]
    return Timing(median_ms=statistics.median(samples), p90_ms=p90)


def profile(
    *,
    batch_sizes: Sequence[int],
    draw: Callable[[int], Feeds],
    onnxruntime: Callable[[Feeds], object],
    torch_run: Callable[[Feeds], object] | None,
    runs: int,
    threads: int,
    budget_s: float = DEFAULT_BUDGET_S,
    slow_run_s: float = SLOW_RUN_S,
) -> tuple[dict[str, Any], list[str]]:
    """Profile each batch size in turn; returns the report's ``profile`` entry and warnings."""
    started = time.monotonic()
    batches: list[dict[str, Any]] = []
    notes: list[str] = []
    for index, batch_size in enumerate(batch_sizes):
        progress(f"profiling batch {batch_size}")
        try:
            ort_timing, torch_timing = _time_batch(draw(batch_size), onnxruntime, torch_run, runs, slow_run_s)
        except Exception as exc:
            raise_if_out_of_memory(exc, f"profiling batch size {batch_size}")
            raise
        batches.append(_batch_entry(batch_size, ort_timing, torch_timing))
        remaining = list(batch_sizes[index + 1 :])
        if not remaining:
            break
        slowest = max(ort_timing.slowest_s, torch_timing.slowest_s if torch_timing else 0.0)
        if slowest > slow_run_s:
            notes.append(
                f"profiling stopped after batch size {batch_size}: one run took {slowest:.3g} s "
                f"(over {slow_run_s:g} s); batch sizes {remaining} were not profiled"
            )
            break
        if time.monotonic() - started > budget_s:
            notes.append(
                f"profiling stopped after batch size {batch_size}: the profile took over {budget_s:g} s; "
                f"batch sizes {remaining} were not profiled"
            )
            break
    return {"provider": PROVIDER, "threads": threads, "runs": runs, "batches": batches}, notes


def _time_batch(
    feeds: Feeds,
    onnxruntime: Callable[[Feeds], object],
    torch_run: Callable[[Feeds], object] | None,
    runs: int,
    slow_run_s: float,
) -> tuple[Timing, Timing | None]:
    ort_timing = time_runs(lambda: onnxruntime(feeds), runs, slow_run_s)
    torch_timing = time_runs(lambda: torch_run(feeds), runs, slow_run_s) if torch_run else None
    return ort_timing, torch_timing


def _batch_entry(batch_size: int, ort_timing: Timing, torch_timing: Timing | None) -> dict[str, Any]:
    median_s = ort_timing.median_ms / 1000.0
    return {
        "batch_size": batch_size,
        "onnxruntime_ms": round(ort_timing.median_ms, 4),
        "onnxruntime_p90_ms": round(ort_timing.p90_ms, 4),
        "torch_ms": round(torch_timing.median_ms, 4) if torch_timing else None,
        "torch_p90_ms": round(torch_timing.p90_ms, 4) if torch_timing else None,
        "speedup": round(torch_timing.median_ms / ort_timing.median_ms, 3)
        if torch_timing and ort_timing.median_ms > 0
        else None,
        "samples_per_s": round(batch_size / median_s, 2) if median_s > 0 else None,
    }
