"""What autoscale_bench.py measured, as tables: printed and written to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
from collections import Counter
from dataclasses import dataclass
from typing import Any

from results_md import cpu_name, markers, package_version, write_section

START, END = markers("autoscale")

NOTES = (
    "### Reading it",
    "",
    "- Flapping counts any fall and later rise of the desired replicas after the step, whatever the cause;"
    " the decisions above show the loads each one saw.",
    "- The autoscaler's load is what the gateway counts in flight, from when its handler has a request."
    " With the load client, the gateway and up to 8 workers on the same 2 cores (and other jobs), part of"
    " each client's wait is outside that count: 8 closed-loop clients can read as 5-7 in flight once 8"
    " replicas serve them. A downscale keeps what the highest upscale-window mean of the downscale window"
    " needs (the Horizontal Pod Autoscaler's stabilisation), not what the window's mean needs: the mean"
    " asked for fewer replicas mid-load, latency rose, and they came back (8 -> 6 -> 8 before).",
    "- A load at the target (1x) reads at or a little above it; within 10% of the running replicas'"
    " target no replica is added or removed, so the 1x phases hold one replica.",
    "- Cold start: the activation starts one replica and no more until it is ready, so the first callers"
    " wait for one worker's start, not for eight sharing two cores; the worker reports at once when it is"
    " ready and that report asks for a reconcile pass, which routes it. Then the held requests ask for the"
    " rest (the load_up after the activation).",
)

Record = tuple[float, float, int]
"""(start, seconds, HTTP status or 0) of one request."""


@dataclass(frozen=True)
class Step:
    """The step load: 1x target in flight, 8x, 1x again."""

    base_clients: int
    step_clients: int
    expected: int
    """Replicas the 8x load asks for (the policy's maximum at most)."""
    low: int
    """Replicas the 1x load asks for."""
    ready_after_s: float | None
    """From the step until the deployment API showed ``expected`` ready (None: not within the load)."""
    ready_at_after_s: float | None
    """The same from the workers' ``ready_at``: the one that made ``expected`` became ready."""
    phases: dict[str, list[Record]]
    replicas_at_end: tuple[int, int]
    """(desired, ready) right after the load ended."""
    replicas_after_delay: tuple[int, int]
    """(desired, ready) one downscale delay after the load ended."""
    down_after_s: float
    """From the end of the load until the replicas were back at ``low``."""
    trace: list[tuple[float, int, int]]
    """(seconds since the step, desired, ready) samples."""
    reasons: list[str]
    """The autoscaler's decisions, oldest first."""

    def failed(self) -> int:
        return sum(1 for records in self.phases.values() for r in records if r[2] != 200)

    def flapped(self) -> bool:
        """Whether the desired replicas ever went down and then up again after the step."""
        lowest: int | None = None
        previous: int | None = None
        for _, desired, _ in (s for s in self.trace if s[0] >= 0):
            if previous is not None and desired < previous:
                lowest = desired if lowest is None else min(lowest, desired)
            if lowest is not None and desired > lowest:
                return True
            previous = desired
        return False


@dataclass(frozen=True)
class ColdStart:
    """Concurrent first callers on a variant at zero."""

    callers: int
    latencies: list[float]
    """Seconds, sorted."""
    failed: int
    zero_after_s: float
    advice_cold_start_s: float | None
    variant_cold_start_s: float | None
    activate_after_s: float | None
    """From the callers' requests to the autoscaler's activate decision."""
    first_start_after_s: float | None
    """... to the first worker's start."""
    first_ready_after_s: float | None
    """... to the first worker's ready_at."""
    reasons: list[str]
    """The autoscaler's decisions after the callers sent their requests, oldest first."""


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _changes(trace: list[tuple[float, int, int]]) -> str:
    """The samples where desired or ready changed, as ``+12.3 s 4/2`` (desired/ready)."""
    out: list[str] = []
    last: tuple[int, int] | None = None
    for at, desired, ready in trace:
        if (desired, ready) != last:
            out.append(f"{at:+.1f} s {desired}/{ready}")
            last = (desired, ready)
    return ", ".join(out)


def _phase_rows(step: Step) -> list[str]:
    clients = {"baseline": step.base_clients, "ramp": step.step_clients, "plateau": step.step_clients}
    rows = []
    for name, records in step.phases.items():
        latencies = [r[1] * 1000 for r in records if r[2] == 200]
        seconds = (max(r[0] for r in records) - min(r[0] for r in records)) if len(records) > 1 else 0.0
        rate = f"{len(records) / seconds:,.0f}" if seconds > 0 else ""
        rows.append(
            f"| {name} | {clients.get(name, step.base_clients)} | {len(records):,} | {rate} "
            f"| {_failed(records)} | {quantile(latencies, 0.5):.1f} "
            f"| {quantile(latencies, 0.99):.1f} |"
        )
    return rows


def _failed(records: list[Record]) -> str:
    """How many failed, by status (0: no HTTP answer)."""
    statuses = Counter(r[2] for r in records if r[2] != 200)
    if not statuses:
        return "0"
    return f"{statuses.total():,} ({', '.join(f'{code}: {n:,}' for code, n in sorted(statuses.items()))})"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _targets(step: Step, cold: ColdStart) -> list[str]:
    ramp = [r[1] * 1000 for r in step.phases["ramp"] if r[2] == 200]
    ready = (
        f"**{_seconds(step.ready_at_after_s)}** after the step (the workers' `ready_at`; the deployment "
        f"API, polled every 0.5 s, showed them after {_seconds(step.ready_after_s)})"
        if step.ready_after_s is not None
        else f"**not within the load** (at most {max((s[2] for s in step.trace), default=0)} ready)"
    )
    start = cold.advice_cold_start_s or cold.variant_cold_start_s
    worst = cold.latencies[-1] if cold.latencies else float("nan")
    verdict = "n/a" if start is None else ("met" if worst < start + 1 else "missed")
    return [
        f"- Step {step.base_clients} -> {step.step_clients} clients (1x -> 8x the target in flight): "
        f"{step.expected} replicas ready {ready}; p99 during the ramp "
        f"{quantile(ramp, 0.99):,.0f} ms.",
        f"- Failed requests (anything but 200) over the whole step load: **{step.failed()}** (target 0).",
        f"- Replicas (desired/ready) right after the load: {'/'.join(map(str, step.replicas_at_end))}; "
        f"one downscale delay later: {'/'.join(map(str, step.replicas_after_delay))}; back at "
        f"{step.low} {step.down_after_s:.1f} s after the load ended. Flapping (down, then up again): "
        f"**{'yes' if step.flapped() else 'none'}**.",
        f"- Cold start from zero, {cold.callers} concurrent first callers: latency min/p50/max "
        f"**{quantile(cold.latencies, 0):.2f}/{quantile(cold.latencies, 0.5):.2f}/{worst:.2f} s**, "
        f"failed **{cold.failed}**; the version's measured cold start (advice API `cold_start_s`) "
        f"{_seconds(cold.advice_cold_start_s)} (variant: {_seconds(cold.variant_cold_start_s)}): target "
        f"max under cold start + 1 s: **{verdict}**.",
    ]


def write_results(
    args: argparse.Namespace,
    policy: dict[str, Any],
    intervals: dict[str, float],
    step: Step,
    cold: ColdStart,
    load_before: tuple[float, float, float],
    errors: list[str],
) -> None:
    load_after = os.getloadavg()
    versions = ", ".join(f"{m} {package_version(m)}" for m in ("onnxruntime", "torch", "httpx"))
    settings = ", ".join(f"{k}={v:g}" for k, v in intervals.items())
    command = "python bench/autoscale_bench.py" + (" --quick" if args.quick else "")
    lines = [
        START,
        "## Autoscaling",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu_name()},"
        f" {os.cpu_count()} cores; Python {platform.python_version()}; {versions}.",
        f"Command: `{command}` (load {args.load_s:g} s at 8x, downscale delay {args.downscale_delay_s:g} s). "
        f"The platform as `bin/kiln-run` starts it ({settings}), a small CNN (3x32x32 in, three "
        "convolutions, about 230 MFLOP) uploaded through the REST API, one variant on the process "
        "backend; closed-loop HTTP JSON clients through the gateway (one httpx client per thread). "
        f"Policy: {', '.join(f'{k} {v}' for k, v in policy.items() if k != 'idle_before_zero_s')}. "
        f"Load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f} "
        "(above the core count, other jobs shared the machine: the times include waiting for a core).",
        f"Each replica runs ONNX Runtime on {_threads(args.intra_op_threads)} (the variant's "
        "`intra_op_threads`), so several fit on the cores.",
        "",
        "### Targets",
        "",
        *_targets(step, cold),
        "",
        "### Step load",
        "",
        "| phase | clients | requests | req/s | failed | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *_phase_rows(step),
        "",
        "Ramp: from the step until the replicas it asks for were ready (their `ready_at`); plateau: from"
        " then until the load ended.",
        "",
        f"Replicas over time, desired/ready, seconds from the step (changes only): {_changes(step.trace)}.",
        "The autoscaler's decisions (replicas, reason, seconds from the step, and the mean requests in"
        " flight it saw over the short window, and the highest such mean over the long window):"
        f" {', '.join(step.reasons)}.",
        "",
        "### Cold start from zero",
        "",
        "| first callers | failed | min s | p50 s | max s | measured cold start s | target: max under s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {cold.callers} | {cold.failed} | {quantile(cold.latencies, 0):.2f} "
        f"| {quantile(cold.latencies, 0.5):.2f} | {quantile(cold.latencies, 1):.2f} "
        f"| {_number(cold.advice_cold_start_s)} "
        f"| {_plus_one(cold.advice_cold_start_s or cold.variant_cold_start_s)} |",
        "",
        f"The variant reached zero {cold.zero_after_s:.1f} s after the policy allowed it (idle time "
        f"{args.idle_s:g} s). After the first callers sent their requests: the autoscaler's activate "
        f"decision at {_seconds(cold.activate_after_s)}, the first "
        f"worker started at {_seconds(cold.first_start_after_s)} and ready at "
        f"{_seconds(cold.first_ready_after_s)} (the platform's `started_at` and `ready_at`), the first "
        f"answer at {quantile(cold.latencies, 0):.2f} s. The decisions from the callers on (replicas, "
        f"reason, when): {', '.join(cold.reasons)}.",
        *([f"Transport errors seen by the load: {'; '.join(errors)}"] if errors else []),
        "",
        *NOTES,
        "",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if args.no_results:
        return
    write_section(section, START, END)


def _plus_one(value: float | None) -> str:
    return "n/a" if value is None else f"{value + 1:.2f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _threads(count: int) -> str:
    return "one thread per core" if count == 0 else f"{count} intra-op thread{'s' if count > 1 else ''}"
