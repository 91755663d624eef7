"""What a rollout measures at each step: every objective it accepted, with its value and sample size.

- ``max_error_rate`` and ``max_p99_ms``: from the candidate's worker reports since the step began
  (requests, non-success outcomes, p99 from the merged latency histograms); the samples are the
  candidate's requests.
- ``min_shadow_agreement``: from the gateways' shadow comparisons. While such a rollout runs, the
  candidate mirrors the requests routed to the baseline and the baseline mirrors the candidate's
  (a gateway never mirrors a request to the variant that answered it), so the two versions are
  compared on every request at every step, the last one (100 %) included. The gateways' counters
  are cumulative: a step measures the difference from the counters at its start
  (``Rollout.shadow_mark``); the samples are the classification rows compared.

A step is judged only on objectives with at least ``min_requests`` samples: a breach rolls the
rollout back, and the step advances only once every objective is measured and met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployments import histograms
from deployments.models import Report, Rollout, Variant
from deployments.services.gateway_stats import variant_stats
from inference_worker.contracts.report import failed_requests


def measure(variant: Variant, *, since: Any) -> dict[str, Any]:
    """The candidate's figures since ``since``: requests, errors, error rate, p99 (ms)."""
    reports = list(Report.objects.filter(variant=variant, resolution=Report.Resolution.RAW, end__gt=since))
    requests = sum(r.requests for r in reports)
    failed = sum(failed_requests(r.outcomes) for r in reports)
    merged = histograms.merge(r.latency_histogram for r in reports)
    if merged:
        p99 = histograms.quantile(merged, 0.99)
    else:
        values = [r.latency_p99_ms for r in reports if r.latency_p99_ms is not None and r.requests]
        p99 = max(values) if values else None
    return {
        "requests": requests,
        "errors": failed,
        "error_rate": (failed / requests) if requests else None,
        "p99_ms": p99,
        "reports": len(reports),
    }


def shadow_counters(rollout: Rollout) -> dict[str, int]:
    """The gateways' agreement counters of the candidate and the baseline, added up."""
    stats = variant_stats(rollout.deployment.name)
    equal = compared = 0
    for name in (rollout.candidate.name, rollout.baseline.name):
        found = stats.get(name)
        if found is not None:
            equal += found.shadow.argmax_equal
            compared += found.shadow.argmax_compared
    return {"agreed_rows": equal, "classified_rows": compared}


def _since_mark(now: dict[str, int], mark: dict[str, Any]) -> dict[str, int]:
    """Counters since the step's mark; a gateway that restarted counts from zero again."""
    delta = {key: now[key] - int(mark.get(key, 0)) for key in now}
    return now if any(value < 0 for value in delta.values()) else delta


@dataclass(frozen=True)
class Objective:
    """One objective at one step: its bound, the measured value (None: not yet) and the sample size."""

    name: str
    bound: float
    value: float | None
    samples: int

    @property
    def is_min(self) -> bool:
        return self.name.startswith("min_")

    @property
    def breached(self) -> bool:
        if self.value is None:
            return False
        return self.value < self.bound if self.is_min else self.value > self.bound

    def as_dict(self) -> dict[str, Any]:
        return {"objective": self.bound, "value": self.value, "samples": self.samples}

    def _parts(self) -> tuple[str, str, str]:
        label = {
            "max_error_rate": "error rate",
            "max_p99_ms": "p99 latency",
            "min_shadow_agreement": "shadow agreement",
        }[self.name]
        if self.name == "max_p99_ms":
            return label, f"{self.value:.1f} ms" if self.value is not None else "", f"{self.bound:g} ms"
        return label, f"{self.value:.1%}" if self.value is not None else "", f"{self.bound:.1%}"

    def text(self) -> str:
        label, shown, bound = self._parts()
        if self.value is None:
            return f"{label} not measured yet ({self.samples} samples)"
        return f"{label} {shown} over {self.samples} samples (objective {bound})"

    def breach_text(self) -> str:
        label, shown, bound = self._parts()
        side = "below" if self.is_min else "above"
        return f"{label} {shown} is {side} the objective of {bound} ({self.samples} samples)"


def evaluate(rollout: Rollout) -> list[Objective]:
    """Every objective the rollout accepted, measured over its current step."""
    figures = measure(rollout.candidate, since=rollout.step_started_at)
    requests = figures["requests"]
    objectives = [
        Objective("max_error_rate", rollout.max_error_rate, figures["error_rate"], requests),
        Objective("max_p99_ms", rollout.max_p99_ms, figures["p99_ms"], requests),
    ]
    if rollout.min_shadow_agreement is not None:
        counted = _since_mark(shadow_counters(rollout), rollout.shadow_mark or {})
        compared = counted["classified_rows"]
        agreement = counted["agreed_rows"] / compared if compared else None
        objectives.append(
            Objective("min_shadow_agreement", rollout.min_shadow_agreement, agreement, compared)
        )
    return objectives


def breach(rollout: Rollout, objectives: list[Objective]) -> str | None:
    """The first objective broken over enough samples, in words (None: none is)."""
    for objective in objectives:
        if objective.samples >= rollout.min_requests and objective.breached:
            return objective.breach_text()
    return None


def unmeasured(rollout: Rollout, objectives: list[Objective]) -> list[str]:
    """The objectives without a value over ``min_requests`` samples yet, in words."""
    return [
        f"{o.name} ({o.samples} of {rollout.min_requests} samples)"
        for o in objectives
        if o.value is None or o.samples < rollout.min_requests
    ]


def summary(objectives: list[Objective]) -> str:
    return "; ".join(o.text() for o in objectives)
