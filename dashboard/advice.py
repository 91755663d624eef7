"""Serving advice from measured numbers: batch size, queue delay, instances and protocol. Pure.

Inputs are the version's conversion report: ONNX Runtime latency per batch size
(median, this hardware) and each protocol's codec cost per request. For a
latency budget L and a throughput target T (requests/s, one sample each):

- one worker processes a batch of b in ``lat(b)`` plus ``b x codec`` on its event
  loop, so it sustains ``b / (lat(b) + b x codec)`` requests/s;
- a request may wait for the batch in flight and then run in the next, so its
  worst case is ``delay + 2 x lat(b) + codec``.

The smallest batch meeting both wins (smallest latency); the protocol with the
cheapest codec is preferred. Extra instances in one worker share the cores the
profile already used, so on the CPU the advice keeps one and scales replicas.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

PROTOCOL_LABELS = {"http_json": "HTTP JSON", "http_binary": "HTTP binary", "grpc": "gRPC"}


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "choice": None
            if self.choice is None
            else {**asdict(self.choice), "protocol_label": PROTOCOL_LABELS[self.choice.protocol]},
            "instances": self.instances,
            "replicas": self.replicas,
            "options": [
                {**asdict(o), "protocol_label": PROTOCOL_LABELS[o.protocol], "meets": o.meets}
                for o in self.options
            ],
            "shortfall": self.shortfall,
            "explanation": self.explanation,
        }


def _option_dict(option: Option) -> dict[str, Any]:
    return {**asdict(option), "protocol_label": PROTOCOL_LABELS[option.protocol], "meets": option.meets}


def _options(report: dict[str, Any], budget_ms: float, target_rps: float) -> list[Option]:
    rows = [r for r in (report.get("profile") or {}).get("batches") or [] if r.get("onnxruntime_ms")]
    costs = (report.get("protocols") or {}).get("per_request_ms") or {}
    options = []
    for protocol, codec in sorted(costs.items(), key=lambda item: item[1]):
        if protocol not in PROTOCOL_LABELS:
            continue
        for row in sorted(rows, key=lambda r: int(r["batch_size"])):
            size, latency = int(row["batch_size"]), float(row["onnxruntime_ms"])
            codec_ms = float(codec)
            delay = (
                round(max(0.0, min(budget_ms - 2 * latency - codec_ms, latency / 4)), 3) if size > 1 else 0.0
            )
            worst = delay + 2 * latency + codec_ms
            throughput = size / ((latency + size * codec_ms) / 1000.0)
            options.append(
                Option(
                    protocol=protocol,
                    batch_size=size,
                    batch_latency_ms=latency,
                    codec_ms=codec_ms,
                    queue_delay_ms=delay,
                    worst_latency_ms=round(worst, 3),
                    p50_latency_ms=round(latency + codec_ms, 3),
                    throughput_rps=round(throughput, 1),
                    meets_latency=worst <= budget_ms,
                    meets_throughput=throughput >= target_rps,
                )
            )
    return options


def advise(report: dict[str, Any], *, budget_ms: float, target_rps: float) -> Advice:
    """The configuration that meets the budget and target on the hardware the profile ran on."""
    options = _options(report, budget_ms, target_rps)
    if not options:
        return Advice(
            None, 1, 1, [], "No latency profile or protocol costs yet: convert the version again.", ""
        )
    meeting = [o for o in options if o.meets]
    if meeting:
        best = min(meeting, key=lambda o: (o.worst_latency_ms, o.codec_ms))
        label = PROTOCOL_LABELS[best.protocol]
        explanation = (
            f"Batch {best.batch_size} runs in {best.batch_latency_ms:.2f} ms (measured); with {label} "
            f"({best.codec_ms:.3f} ms codec per request) one worker sustains "
            f"{best.throughput_rps:,.0f} req/s >= {target_rps:,.0f}, and the worst case "
            f"{best.worst_latency_ms:.2f} ms (delay {best.queue_delay_ms:g} + 2 x "
            f"{best.batch_latency_ms:.2f} + codec) fits {budget_ms:g} ms."
        )
        return Advice(best, 1, 1, options, "", explanation)
    within = [o for o in options if o.meets_latency]
    if not within:
        fastest = min(options, key=lambda o: o.worst_latency_ms)
        over = fastest.worst_latency_ms - budget_ms
        shortfall = (
            f"Latency falls short: even batch {fastest.batch_size} over {PROTOCOL_LABELS[fastest.protocol]} "
            f"needs {fastest.worst_latency_ms:.2f} ms in the worst case, {over:.2f} ms over the "
            f"{budget_ms:g} ms budget."
        )
        return Advice(None, 1, 1, options, shortfall, "")
    best = max(within, key=lambda o: o.throughput_rps)
    replicas = math.ceil(target_rps / best.throughput_rps)
    missing = target_rps - best.throughput_rps
    shortfall = (
        f"Throughput falls short: within {budget_ms:g} ms one worker reaches at most "
        f"{best.throughput_rps:,.0f} req/s (batch {best.batch_size}, {PROTOCOL_LABELS[best.protocol]}), "
        f"{missing:,.0f} req/s ({missing / target_rps:.0%}) below the target of {target_rps:,.0f}. "
        f"{replicas} replicas on separate hardware would reach it."
    )
    return Advice(best, 1, replicas, options, shortfall, "")
