"""Serving advice from measured numbers: batch size, queue delay, instances and protocol. Pure.

The choice is the platform's one batching rule (``deployments.services.batching.propose_batching``,
whose docstring has the arithmetic), with the throughput target T: the deploy
form given the same budget and target proposes exactly these options, and the
advice's link carries them there whole. Around the choice the advice lays out
every measured (protocol, batch) option and says what falls short when nothing
meets both the budget and T. Extra instances in one worker share the cores the
profile already used, so on the CPU the advice keeps one and scales replicas.

Its throughput figures are predictions from compute and codec time alone
(``THROUGHPUT_BASIS``), never measured against a running worker, and it says so:
they are upper bounds, far above what a worker serves for a small model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from deployments.services.batching import (
    PROTOCOLS,
    codec_costs,
    profiled_batches,
    propose_batching,
    queue_delay_ms,
    throughput_rps,
    worst_latency_ms,
)
from inference_worker.contracts.batching import BATCHING, BatchingConfig

PROTOCOL_LABELS = PROTOCOLS
THROUGHPUT_BASIS = (
    "Predicted, not measured: throughput here is the profiled ONNX Runtime time per batch plus the codec "
    "time per request. A running worker also reads, parses, schedules and answers every request, so it "
    "serves less (several times less for a model whose batch runs in well under a millisecond); measure a "
    "deployment before relying on the replica count."
)


@dataclass(frozen=True)
class Option:
    """One measured configuration and what it achieves."""

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

    @property
    def meets(self) -> bool:
        return self.meets_latency and self.meets_throughput


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "choice": None if self.choice is None else _option_dict(self.choice),
            "instances": self.instances,
            "replicas": self.replicas,
            "options": [_option_dict(o) for o in self.options],
            "shortfall": self.shortfall,
            "explanation": self.explanation,
            "throughput_basis": THROUGHPUT_BASIS,
            "deploy": self.deploy,
        }


def _option_dict(option: Option) -> dict[str, Any]:
    return {**asdict(option), "protocol_label": PROTOCOL_LABELS[option.protocol], "meets": option.meets}


def _options(report: dict[str, Any], budget_ms: float, target_rps: float) -> list[Option]:
    options = []
    for protocol, codec_ms in codec_costs(report).items():
        for batch in profiled_batches(report):
            worst = worst_latency_ms(batch, budget_ms, codec_ms)
            throughput = throughput_rps(batch, codec_ms)
            options.append(
                Option(
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
            )
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


def advise(report: dict[str, Any], *, budget_ms: float, target_rps: float) -> Advice:
    """The configuration that meets the budget and target on the hardware the profile ran on."""
    options = _options(report, budget_ms, target_rps)
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
        return Advice(None, 1, 1, options, shortfall, "")
    batching = proposal.batching
    replicas = math.ceil(target_rps / best.throughput_rps)
    deploy = _query(batching, replicas, budget_ms, target_rps)
    if best.meets:
        label = PROTOCOL_LABELS[best.protocol]
        explanation = (
            f"Batch {best.batch_size} runs in {best.batch_latency_ms:.2f} ms (measured); with {label} "
            f"({best.codec_ms:.3f} ms codec per request) one worker is predicted to sustain at most "
            f"{best.throughput_rps:,.0f} req/s >= {target_rps:,.0f} (compute and codec only, not measured), "
            f"and the worst case "
            f"{best.worst_latency_ms:.2f} ms (delay {best.queue_delay_ms:g} + 2 x "
            f"{best.batch_latency_ms:.2f} + codec) fits {budget_ms:g} ms."
        )
        return Advice(best, batching.instances, 1, options, "", explanation, batching, deploy)
    missing = target_rps - best.throughput_rps
    shortfall = (
        f"Throughput falls short: within {budget_ms:g} ms one worker is predicted to reach at most "
        f"{best.throughput_rps:,.0f} req/s (batch {best.batch_size}, {PROTOCOL_LABELS[best.protocol]}; "
        "compute and codec only, not measured), "
        f"{missing:,.0f} req/s ({missing / target_rps:.0%}) below the target of {target_rps:,.0f}. "
        f"{replicas} replicas on separate hardware would reach it."
    )
    return Advice(best, batching.instances, replicas, options, shortfall, "", batching, deploy)
