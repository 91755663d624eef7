"""Serving advice: batch size, queue delay, instances and protocol, measured when it can be. Pure.

The choice is the platform's one batching rule (``deployments.services.batching.propose_batching``,
whose docstring has the arithmetic), with the throughput target T: the deploy
form given the same budget and target proposes exactly these options, and the
advice's link carries them there whole. Around the choice the advice lays out
every profiled (protocol, batch) option and says what falls short when nothing
meets both the budget and T. Extra instances in one worker share the cores the
profile already used, so on the CPU the advice keeps one and scales replicas.

Throughput comes from measurements when the version has them (as Triton's Model Analyzer does:
``deployments.services.measurements`` runs the real worker with each batching the rule can
propose under a closed-loop load on this machine): an option's measured figure is the most its
configuration served with its p99 within the budget, and the replicas for T follow from it.
Without a measurement of the chosen configuration the figures are predictions from compute and
codec time alone (``THROUGHPUT_BASIS``), upper bounds far above what a worker serves for a small
model, and the advice says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from deployments.services.batching import (
    PROTOCOLS,
    candidate_batchings,
    codec_costs,
    profiled_batches,
    propose_batching,
    queue_delay_ms,
    throughput_rps,
    worst_latency_ms,
)
from deployments.services.measurements import MeasuredCell, config_key
from inference_worker.contracts.batching import BATCHING, BatchingConfig, encode_batching

PROTOCOL_LABELS = PROTOCOLS
THROUGHPUT_BASIS = (
    "Predicted, not measured: throughput here is the profiled ONNX Runtime time per batch plus the codec "
    "time per request. A running worker also reads, parses, schedules and answers every request, so it "
    "serves less (several times less for a model whose batch runs in well under a millisecond). Measure "
    "this version (the button below, the measurements API or kiln measure) to quote a running worker."
)


@dataclass(frozen=True)
class Option:
    """One profiled configuration, what it is predicted to achieve, and what it measured (if it did).

    ``meets_*`` follow the measurement when there is one, else the prediction.
    """

    protocol: str
    batch_size: int
    batch_latency_ms: float
    codec_ms: float
    queue_delay_ms: float
    worst_latency_ms: float
    p50_latency_ms: float
    throughput_rps: float
    meets_latency: bool
    meets_throughput: bool
    measured_throughput_rps: float | None = None
    measured_p50_ms: float | None = None
    measured_p99_ms: float | None = None
    measured_concurrency: int | None = None
    measured_at: datetime | None = None

    @property
    def meets(self) -> bool:
        return self.meets_latency and self.meets_throughput

    @property
    def measured(self) -> bool:
        return self.measured_throughput_rps is not None


@dataclass(frozen=True)
class Advice:
    """The recommendation, the options behind it, and what falls short when nothing fits."""

    choice: Option | None
    instances: int
    replicas: int
    options: list[Option]
    shortfall: str
    explanation: str
    batching: BatchingConfig | None = None
    """The options to deploy with (None when nothing fits the budget)."""
    deploy: dict[str, str] | None = None
    """The deploy form's query for exactly this advice (its batching options, replicas, budget, target)."""
    basis: str = THROUGHPUT_BASIS
    measurements: Sequence[MeasuredCell] = ()

    @property
    def measured(self) -> bool:
        return self.choice is not None and self.choice.measured

    def as_dict(self) -> dict[str, Any]:
        return {
            "choice": None if self.choice is None else _option_dict(self.choice),
            "instances": self.instances,
            "replicas": self.replicas,
            "options": [_option_dict(o) for o in self.options],
            "shortfall": self.shortfall,
            "explanation": self.explanation,
            "throughput_basis": self.basis,
            "measured": self.measured,
            "measured_at": self.choice.measured_at if self.choice is not None else None,
            "deploy": self.deploy,
            "batching": None if self.batching is None else encode_batching(self.batching),
            "measurements": [asdict(cell) for cell in self.measurements],
        }


def _option_dict(option: Option) -> dict[str, Any]:
    return {
        **asdict(option),
        "protocol_label": PROTOCOL_LABELS[option.protocol],
        "meets": option.meets,
        "measured": option.measured,
    }


def _capacity(cells: list[MeasuredCell], budget_ms: float) -> tuple[MeasuredCell, bool] | None:
    """The cell quoted for a configuration: the most served with p99 within the budget (True), else
    the lowest p99 measured (False); None without cells."""
    fitting = [c for c in cells if c.p99_ms is not None and c.p99_ms <= budget_ms and c.errors == 0]
    if fitting:
        return max(fitting, key=lambda c: c.throughput_rps), True
    answered = [c for c in cells if c.p99_ms is not None]
    return (min(answered, key=lambda c: c.p99_ms or 0.0), False) if answered else None


def _options(
    report: dict[str, Any], budget_ms: float, target_rps: float, measured: Sequence[MeasuredCell]
) -> list[Option]:
    keys = {c.max_batch_size: config_key(c) for c in candidate_batchings(report, latency_budget_ms=budget_ms)}
    options = []
    for protocol, codec_ms in codec_costs(report).items():
        for batch in profiled_batches(report):
            worst = worst_latency_ms(batch, budget_ms, codec_ms)
            throughput = throughput_rps(batch, codec_ms)
            key = keys.get(batch.batch_size)
            cells = [c for c in measured if c.protocol == protocol and c.config_key == key]
            quoted = _capacity(cells, budget_ms)
            option = Option(
                protocol=protocol,
                batch_size=batch.batch_size,
                batch_latency_ms=batch.latency_ms,
                codec_ms=codec_ms,
                queue_delay_ms=queue_delay_ms(batch, budget_ms, codec_ms),
                worst_latency_ms=round(worst, 3),
                p50_latency_ms=round(batch.latency_ms + codec_ms, 3),
                throughput_rps=round(throughput, 1),
                meets_latency=worst <= budget_ms,
                meets_throughput=throughput >= target_rps,
            )
            if quoted is not None:
                cell, fits = quoted
                option = Option(
                    **{
                        **asdict(option),
                        "meets_latency": fits,
                        "meets_throughput": cell.throughput_rps >= target_rps,
                        "measured_throughput_rps": cell.throughput_rps,
                        "measured_p50_ms": cell.p50_ms,
                        "measured_p99_ms": cell.p99_ms,
                        "measured_concurrency": cell.concurrency,
                        "measured_at": cell.measured_at,
                    }
                )
            options.append(option)
    return options


def _query(batching: BatchingConfig, replicas: int, budget_ms: float, target_rps: float) -> dict[str, str]:
    """The deploy form's query string values: every batching option as its field reads it."""
    query = {name: BATCHING[name].to_text(value) for name, value in batching.values().items()}
    return {
        **query,
        "replicas": str(replicas),
        "latency_budget_ms": f"{budget_ms:g}",
        "target_rps": f"{target_rps:g}",
    }


def _when(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def _measured_basis(choice: Option, measured: Sequence[MeasuredCell]) -> str:
    machines = sorted({c.machine for c in measured if c.measured_at == choice.measured_at} - {""})
    clients = sorted({c.concurrency for c in measured})
    return (
        f"Measured on this machine at {_when(choice.measured_at)}"
        + (f" ({machines[0]})" if machines else "")
        + ": the real inference worker, started with exactly these options, answered a closed-loop load "
        f"of {', '.join(map(str, clients))} concurrent HTTP clients on 127.0.0.1; the throughput quoted "
        "is the most it served with its p99 within the budget. Network transfer beyond the loopback is "
        "not included, and another machine serves differently: measure again there."
    )


def advise(
    report: dict[str, Any], *, budget_ms: float, target_rps: float, measured: Sequence[MeasuredCell] = ()
) -> Advice:
    """The configuration that meets the budget and target, with measured figures where ``measured`` has
    them (the version's measured cells), else predicted ones from the profile."""
    options = _options(report, budget_ms, target_rps, measured)
    if not options:
        return Advice(
            None, 1, 1, [], "No latency profile or protocol costs yet: convert the version again.", ""
        )
    proposal = propose_batching(report, latency_budget_ms=budget_ms, target_rps=target_rps)
    chosen = proposal.measured
    best = next(
        (
            o
            for o in options
            if chosen and (o.protocol, o.batch_size) == (proposal.protocol, chosen.batch_size)
        ),
        None,
    )
    if best is None:
        fastest = min(options, key=lambda o: o.worst_latency_ms)
        over = fastest.worst_latency_ms - budget_ms
        shortfall = (
            f"Latency falls short: even batch {fastest.batch_size} over {PROTOCOL_LABELS[fastest.protocol]} "
            f"needs {fastest.worst_latency_ms:.2f} ms in the worst case, {over:.2f} ms over the "
            f"{budget_ms:g} ms budget."
        )
        return Advice(None, 1, 1, options, shortfall, "", measurements=measured)
    if best.measured_throughput_rps is not None:
        return _measured_advice(best, proposal.batching, options, budget_ms, target_rps, measured)
    batching = proposal.batching
    replicas = math.ceil(target_rps / best.throughput_rps)
    deploy = _query(batching, replicas, budget_ms, target_rps)
    label = PROTOCOL_LABELS[best.protocol]
    if best.meets:
        explanation = (
            f"Batch {best.batch_size} runs in {best.batch_latency_ms:.2f} ms (profiled); with {label} "
            f"({best.codec_ms:.3f} ms codec per request) one worker is predicted to sustain at most "
            f"{best.throughput_rps:,.0f} req/s >= {target_rps:,.0f} (compute and codec only, not measured), "
            f"and the worst case "
            f"{best.worst_latency_ms:.2f} ms (delay {best.queue_delay_ms:g} + 2 x "
            f"{best.batch_latency_ms:.2f} + codec) fits {budget_ms:g} ms."
        )
        return Advice(
            best, batching.instances, 1, options, "", explanation, batching, deploy, measurements=measured
        )
    missing = target_rps - best.throughput_rps
    shortfall = (
        f"Throughput falls short: within {budget_ms:g} ms one worker is predicted to reach at most "
        f"{best.throughput_rps:,.0f} req/s (batch {best.batch_size}, {label}; "
        "compute and codec only, not measured), "
        f"{missing:,.0f} req/s ({missing / target_rps:.0%}) below the target of {target_rps:,.0f}. "
        f"{replicas} replicas on separate hardware would reach it."
    )
    return Advice(
        best, batching.instances, replicas, options, shortfall, "", batching, deploy, measurements=measured
    )


def _measured_advice(
    best: Option,
    batching: BatchingConfig,
    options: list[Option],
    budget_ms: float,
    target_rps: float,
    measured: Sequence[MeasuredCell],
) -> Advice:
    """The rule's choice, its replicas and texts from what its configuration measured."""
    rps, p99 = best.measured_throughput_rps or 0.0, best.measured_p99_ms or 0.0
    replicas = max(1, math.ceil(target_rps / rps)) if rps > 0 else 1
    deploy = _query(batching, replicas, budget_ms, target_rps)
    label, when, clients = PROTOCOL_LABELS[best.protocol], _when(best.measured_at), best.measured_concurrency
    served = (
        f"one worker served {rps:,.0f} req/s with p99 {p99:.2f} ms at {clients} concurrent clients "
        f"(predicted from compute and codec alone: {best.throughput_rps:,.0f})"
    )
    basis = _measured_basis(best, measured)
    if not best.meets_latency:
        shortfall = (
            f"Latency falls short: measured on this machine at {when}, batch {best.batch_size} over {label} "
            f"answered with p99 {p99:.2f} ms even at {clients} concurrent client(s), over the "
            f"{budget_ms:g} ms budget."
        )
        return Advice(
            best, batching.instances, replicas, options, shortfall, "", batching, deploy, basis, measured
        )
    if best.meets_throughput:
        explanation = (
            f"Batch {best.batch_size} over {label}, measured on this machine at {when}: {served}, "
            f">= {target_rps:,.0f} within the {budget_ms:g} ms budget."
        )
        return Advice(
            best, batching.instances, 1, options, "", explanation, batching, deploy, basis, measured
        )
    missing = target_rps - rps
    shortfall = (
        f"Throughput falls short: batch {best.batch_size} over {label}, measured on this machine at {when}: "
        f"{served}, {missing:,.0f} req/s ({missing / target_rps:.0%}) below the target of "
        f"{target_rps:,.0f}. {replicas} replicas on separate hardware would reach it."
    )
    return Advice(
        best, batching.instances, replicas, options, shortfall, "", batching, deploy, basis, measured
    )
