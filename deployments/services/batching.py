"""Batching options: checked against the option table, and proposed from the measured profile.

``propose_batching`` is the one rule that proposes batching: the deploy form
and the API start from it, and the serving advice (``dashboard.advice``)
chooses by it. Inputs are the version's conversion report: ONNX Runtime
latency per batch size, and each protocol's codec cost per request (the
cheapest protocol is counted: it is the one the advice recommends). For a
budget L:

- a request may wait for the batch in flight and then run in its own, so its
  worst case is ``delay + 2 x lat(b) + codec``;
- the queue delay is what the budget leaves, at most a quarter of ``lat(b)``,
  so an idle worker still answers quickly (none for a batch of 1);
- a worker sustains ``b / (lat(b) + b x codec)`` requests/s.

Without a throughput target the largest batch that fits wins (the most
throughput the budget allows); with one, the lowest worst case that meets it,
else the most throughput that fits. Only batch sizes the option table accepts
are considered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from config.errors import about_field
from deployments.errors import InvalidDeploymentError
from inference_worker.contracts.batching import BATCHING, MAX_BATCH_SIZE, BatchingConfig, parse_batching
from inference_worker.contracts.errors import ContractError

PROTOCOLS = {"http_json": "HTTP JSON", "http_binary": "HTTP binary", "grpc": "gRPC"}
"""The protocols whose codec cost conversion measures, and their names for people."""


def validate_batching(
    raw: dict[str, Any], *, prefix: str = "", fixed_batch: bool = False, base: BatchingConfig | None = None
) -> BatchingConfig:
    """The options ``raw`` asks for on top of ``base`` (the defaults without one); errors name the field."""
    try:
        config = parse_batching(raw, base=base)
    except ContractError as exc:
        field = f"{prefix}{exc.field}"
        raise InvalidDeploymentError(f"{prefix}{exc}", extra=about_field(field, str(exc))) from None
    return config.unbatched() if fixed_batch and config.max_batch_size != 1 else config


def below(config: BatchingConfig, max_batch_size: int) -> BatchingConfig:
    """``config`` without the preferred sizes a smaller max batch size would refuse."""
    sizes = tuple(size for size in config.preferred_batch_sizes if size <= max_batch_size)
    return replace(config, preferred_batch_sizes=sizes)


# -- the rule ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    """One profiled batch size and its median ONNX Runtime latency."""

    batch_size: int
    latency_ms: float


def profiled_batches(report: dict[str, Any]) -> list[Measured]:
    """The profile's batch sizes the option table accepts (batch 1 only without a dynamic batch axis)."""
    rows = (report.get("profile") or {}).get("batches") or []
    measured = sorted(
        (Measured(int(r["batch_size"]), float(r["onnxruntime_ms"])) for r in rows if r.get("onnxruntime_ms")),
        key=lambda m: m.batch_size,
    )
    highest = BATCHING[MAX_BATCH_SIZE.name].high or math.inf  # the table as it is now
    if not report.get("dynamic_batch", True):
        highest = 1
    return [m for m in measured if 1 <= m.batch_size <= highest]


def codec_costs(report: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per request of each known protocol, cheapest first."""
    costs = (report.get("protocols") or {}).get("per_request_ms") or {}
    known = {protocol: float(cost) for protocol, cost in costs.items() if protocol in PROTOCOLS}
    return dict(sorted(known.items(), key=lambda item: item[1]))


def queue_delay_ms(batch: Measured, budget_ms: float, codec_ms: float = 0.0) -> float:
    if batch.batch_size <= 1:
        return 0.0
    return round(max(0.0, min(budget_ms - 2 * batch.latency_ms - codec_ms, batch.latency_ms / 4)), 3)


def worst_latency_ms(batch: Measured, budget_ms: float, codec_ms: float = 0.0) -> float:
    return queue_delay_ms(batch, budget_ms, codec_ms) + 2 * batch.latency_ms + codec_ms


def throughput_rps(batch: Measured, codec_ms: float = 0.0) -> float:
    return batch.batch_size / ((batch.latency_ms + batch.batch_size * codec_ms) / 1000.0)


@dataclass(frozen=True)
class Proposal:
    """The proposed options, why, and the measured batch they rest on (None: nothing fits)."""

    batching: BatchingConfig
    note: str
    measured: Measured | None = None
    protocol: str | None = None
    """The protocol whose codec cost was counted (the cheapest measured); None without costs."""
    codec_ms: float = 0.0


def propose_batching(
    report: dict[str, Any], *, latency_budget_ms: float, target_rps: float | None = None
) -> Proposal:
    """The batching options for a version, from its profile (see the module's docstring)."""
    rows = profiled_batches(report)
    costs = codec_costs(report)
    protocol, codec = next(iter(costs.items()), (None, 0.0))
    budget = latency_budget_ms
    fitting = [m for m in rows if 2 * m.latency_ms + codec <= budget]
    chosen = _choose(fitting, codec, target_rps)
    if not report.get("dynamic_batch", True):
        note = "The model has a fixed batch dimension: batching is off."
        return Proposal(BatchingConfig().unbatched(), note, chosen, protocol, codec)
    if not rows:
        default = MAX_BATCH_SIZE.default
        note = f"No latency profile yet: Triton-like defaults (max batch {default}, no queue delay)."
        return Proposal(BatchingConfig(), note)
    if chosen is None:
        note = (
            f"Even batch {rows[0].batch_size} takes {rows[0].latency_ms:.2f} ms, so twice that"
            f"{_plus(codec, protocol)} exceeds the {budget:g} ms budget: batching is off."
        )
        return Proposal(BatchingConfig(max_batch_size=1), note, None, protocol, codec)
    size, latency = chosen.batch_size, chosen.latency_ms
    config = _batching_for(chosen, fitting, budget, codec)
    delay = config.max_queue_delay_ms
    larger = next((m for m in rows if m.batch_size > size), None)
    # The sum is of the figures as printed, so that the arithmetic reads right (not 2 x 0.01 = 0.03).
    shown, shown_codec = _figure(latency), _figure(codec)
    plus = f" + {shown_codec:g} ms {PROTOCOLS[protocol]} codec" if protocol is not None else ""
    note = (
        f"Batch {size} takes {shown:g} ms (profiled), so a request waiting for one batch and running in "
        f"the next stays within 2 × {shown:g}{plus} = {_figure(2 * shown + shown_codec):g} ms of "
        f"the {budget:g} ms budget; the queue delay of {delay:g} ms fits the rest."
    )
    if target_rps is not None:
        note += f" One worker sustains {throughput_rps(chosen, codec):,.0f} req/s (target {target_rps:,.0f})."
    elif larger is not None:
        note += f" Larger batches exceed it (batch {larger.batch_size}: {_figure(larger.latency_ms):g} ms)."
    return Proposal(config, note, chosen, protocol, codec)


def _batching_for(chosen: Measured, fitting: list[Measured], budget: float, codec: float) -> BatchingConfig:
    """The options the rule proposes once it chose ``chosen`` among the batches that fit the budget."""
    size = chosen.batch_size
    delay = queue_delay_ms(chosen, budget, codec)
    preferred = tuple(m.batch_size for m in fitting if max(2, size // 4) <= m.batch_size <= size)
    return BatchingConfig(max_batch_size=size, max_queue_delay_ms=delay, preferred_batch_sizes=preferred)


def candidate_batchings(report: dict[str, Any], *, latency_budget_ms: float) -> list[BatchingConfig]:
    """Every batching ``propose_batching`` can answer for this budget, whatever the target: the options
    it proposes for each profiled batch that fits, smallest first (what a measurement run tries)."""
    rows = profiled_batches(report)
    codec = next(iter(codec_costs(report).values()), 0.0)
    if not report.get("dynamic_batch", True):
        return [BatchingConfig().unbatched()]
    if not rows:
        return [BatchingConfig()]
    fitting = [m for m in rows if 2 * m.latency_ms + codec <= latency_budget_ms]
    if not fitting:
        return [BatchingConfig(max_batch_size=1)]
    return [_batching_for(m, fitting, latency_budget_ms, codec) for m in fitting]


def _choose(fitting: list[Measured], codec: float, target_rps: float | None) -> Measured | None:
    if not fitting:
        return None
    if target_rps is None:
        return fitting[-1]
    meeting = [m for m in fitting if throughput_rps(m, codec) >= target_rps]
    if meeting:
        return min(meeting, key=lambda m: (m.latency_ms, m.batch_size))
    return max(fitting, key=lambda m: throughput_rps(m, codec))


def _figure(ms: float) -> float:
    """A duration rounded to three significant digits, as the notes print it."""
    return float(f"{ms:.3g}")


def _plus(codec: float, protocol: str | None) -> str:
    return f" + {codec:.3f} ms {PROTOCOLS[protocol]} codec" if protocol is not None else ""
