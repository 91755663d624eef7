"""A histogram on the wire: upper bounds and per-bucket counts, as in the report and the gateway stats.

JSON form: ``{"le": [0.25, 0.5, 1.0, "+Inf"], "counts": [3, 9, 1, 0]}``: the
counts are per bucket (not cumulative) and the last bucket, ``"+Inf"``, holds
the rest. Bounds keep the type the producer wrote (``1`` stays ``1``, ``1.0``
stays ``1.0``): the platform stores them as text and merges histograms whose
bounds read the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.wire import at, integer, number, sequence

INF = "+Inf"
MAX_BUCKETS = 64


@dataclass(frozen=True)
class HistogramRecord:
    """Finite upper bounds ``le`` and ``len(le) + 1`` counts (the last bucket has no upper bound)."""

    le: tuple[int | float, ...] = ()
    counts: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.le) + 1:
            raise ContractError("counts", f"expected {len(self.le) + 1} counts (one per bound and +Inf)")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def plus(self, other: HistogramRecord) -> HistogramRecord:
        """Both histograms' counts added when their bounds agree; an empty one (no bounds) adds nothing.

        Histograms with other bounds do not add up: this one is kept, unchanged.
        """
        if not self.le:
            return other
        if other.le != self.le:
            return self
        return HistogramRecord(self.le, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)))


def encode_histogram(histogram: HistogramRecord) -> dict[str, Any]:
    return {"le": [*histogram.le, INF], "counts": list(histogram.counts)}


def parse_histogram(payload: object, where: str) -> HistogramRecord:
    if not isinstance(payload, dict):
        raise ContractError(where, "must be an object")
    le = sequence(payload.get("le"), at(where, "le"), most=MAX_BUCKETS)
    counts = sequence(payload.get("counts"), at(where, "counts"), most=MAX_BUCKETS)
    if not le or le[-1] != INF:
        raise ContractError(at(where, "le"), f"must end with {INF!r}")
    bounds = tuple(_bound(value, at(at(where, "le"), i)) for i, value in enumerate(le[:-1]))
    if len(counts) != len(le):
        raise ContractError(at(where, "counts"), "must have one count per bound")
    return HistogramRecord(
        bounds, tuple(integer(c, at(at(where, "counts"), i), low=0) for i, c in enumerate(counts))
    )


def _bound(value: object, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(where, "must be a number")
    number(value, where)  # finite
    return value
