"""Batching options: validation, and a proposal measured from the conversion profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployments.errors import InvalidDeploymentError

MAX_BATCH = 4096
MAX_QUEUE_DELAY_MS = 1000.0
MAX_QUEUE_SIZE = 100_000
MAX_TIMEOUT_MS = 600_000.0
MAX_INSTANCES = 16


@dataclass(frozen=True)
class Batching:
    """The worker's batching options (Triton's names)."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    request_timeout_ms: float = 10_000.0
    instances: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "max_queue_size": self.max_queue_size,
            "request_timeout_ms": self.request_timeout_ms,
            "instances": self.instances,
        }


def _number(
    raw: dict[str, Any], field: str, default: float, low: float, high: float, *, integer: bool
) -> Any:
    value = raw.get(field, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        kind = "an integer" if integer else "a number"
        raise InvalidDeploymentError(f"{field}: must be {kind}", extra={"field": field})
    if not low <= value <= high or value != value:
        raise InvalidDeploymentError(f"{field}: {value} is outside {low:g}..{high:g}", extra={"field": field})
    return value


def validate_batching(raw: dict[str, Any], *, prefix: str = "", fixed_batch: bool = False) -> Batching:
    """Check every option against sane bounds; errors name the field."""
    try:
        max_batch = _number(raw, "max_batch_size", 32, 1, MAX_BATCH, integer=True)
        delay = float(_number(raw, "max_queue_delay_ms", 0.0, 0.0, MAX_QUEUE_DELAY_MS, integer=False))
        queue = _number(raw, "max_queue_size", 1024, 1, MAX_QUEUE_SIZE, integer=True)
        timeout = float(_number(raw, "request_timeout_ms", 10_000.0, 1.0, MAX_TIMEOUT_MS, integer=False))
        instances = _number(raw, "instances", 1, 1, MAX_INSTANCES, integer=True)
        preferred_raw = raw.get("preferred_batch_sizes") or []
        if not isinstance(preferred_raw, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in preferred_raw
        ):
            raise InvalidDeploymentError("preferred_batch_sizes: must be a list of integers")
        preferred = tuple(sorted(set(preferred_raw)))
        if any(s < 1 or s > max_batch for s in preferred):
            raise InvalidDeploymentError(
                f"preferred_batch_sizes: every size must be between 1 and max_batch_size ({max_batch})"
            )
    except InvalidDeploymentError as exc:
        raise InvalidDeploymentError(f"{prefix}{exc.message}", extra=exc.extra) from None
    if fixed_batch and max_batch != 1:
        max_batch, preferred, delay = 1, (), 0.0
    return Batching(max_batch, delay, preferred, queue, timeout, instances)


def propose_batching(report: dict[str, Any], *, latency_budget_ms: float) -> tuple[Batching, str]:
    """The largest batch whose profiled latency fits the budget, and a queue delay from the rest.

    A request can wait for the batch in flight and then run in its own, so the rule
    is ``2 x latency(batch) + delay <= budget``; the delay is at most a quarter of
    the batch latency, so an idle worker still answers quickly.
    """
    rows = sorted(
        (
            r
            for r in (report.get("profile") or {}).get("batches") or []
            if r.get("onnxruntime_ms") is not None
        ),
        key=lambda r: int(r["batch_size"]),
    )
    if not report.get("dynamic_batch", True):
        return Batching(max_batch_size=1), "The model has a fixed batch dimension: batching is off."
    if not rows:
        return Batching(), "No latency profile yet: Triton-like defaults (max batch 32, no queue delay)."
    fitting = [r for r in rows if 2 * float(r["onnxruntime_ms"]) <= latency_budget_ms]
    if not fitting:
        first = rows[0]
        return (
            Batching(max_batch_size=1),
            f"Even batch 1 takes {float(first['onnxruntime_ms']):.2f} ms, so twice that exceeds the "
            f"{latency_budget_ms:g} ms budget: batching is off.",
        )
    best = fitting[-1]
    size, latency = int(best["batch_size"]), float(best["onnxruntime_ms"])
    delay = round(min(latency_budget_ms - 2 * latency, latency / 4), 2)
    preferred = tuple(int(r["batch_size"]) for r in fitting if int(r["batch_size"]) >= max(2, size // 4))
    larger = rows[len(fitting)] if len(fitting) < len(rows) else None
    note = (
        f"Batch {size} takes {latency:.2f} ms (profiled), so a request waiting for one batch and running in "
        f"the next stays within 2 x {latency:.2f} = {2 * latency:.2f} ms of the {latency_budget_ms:g} ms "
        f"budget; the queue delay of {delay:g} ms fits the rest. Larger batches exceed it"
        + (
            f" (batch {larger['batch_size']}: {float(larger['onnxruntime_ms']):.2f} ms)."
            if larger is not None
            else "."
        )
    )
    return Batching(
        max_batch_size=size, max_queue_delay_ms=max(delay, 0.0), preferred_batch_sizes=preferred
    ), note
