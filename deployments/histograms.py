"""Histogram arithmetic for reports: merge bucket counts, read quantiles. Pure.

Histograms are ``{"le": [upper bounds..., "+Inf"], "counts": [per-bucket counts]}``
(non-cumulative). Quantiles are interpolated inside buckets, like Prometheus'
``histogram_quantile``; merging adds counts, so percentiles across replicas are
computed from the merged buckets, never by averaging percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from inference_worker.contracts.histograms import HistogramRecord, encode_histogram


def merge(histograms: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up histograms with the same bounds (others are skipped)."""
    merged: dict[str, Any] = {}
    for histogram in histograms:
        if not histogram or not histogram.get("le"):
            continue
        if not merged:
            merged = {"le": list(histogram["le"]), "counts": [int(c) for c in histogram["counts"]]}
        elif merged["le"] == list(histogram["le"]):
            pairs = zip(merged["counts"], histogram["counts"], strict=True)
            merged["counts"] = [a + int(b) for a, b in pairs]
    return merged


def _bound(value: Any) -> float:
    return math.inf if str(value) in ("+Inf", "inf", "Infinity") else float(value)


def quantile(histogram: dict[str, Any], q: float) -> float | None:
    """The ``q`` quantile (0..1), interpolated linearly inside its bucket; None when empty."""
    if not histogram or not histogram.get("counts"):
        return None
    bounds = [_bound(b) for b in histogram["le"]]
    counts = [int(c) for c in histogram["counts"]]
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count and seen + count >= rank:
            if math.isinf(bound):
                return lower  # Prometheus returns the highest finite bound
            return lower + (bound - lower) * ((rank - seen) / count)
        seen += count
        if not math.isinf(bound):
            lower = bound
    return lower


def total(histogram: dict[str, Any]) -> int:
    return sum(int(c) for c in histogram.get("counts", [])) if histogram else 0


def stored(record: HistogramRecord | None) -> dict[str, Any]:
    """How a report's histogram is kept: bounds as text, so the histograms of every report merge.

    (They were stored that way before the contract existed; an absent histogram is ``{}``.)
    """
    if record is None:
        return {}
    encoded = encode_histogram(record)
    return {"le": [str(bound) for bound in encoded["le"]], "counts": encoded["counts"]}


def quantile_of(record: HistogramRecord, q: float) -> float | None:
    """``quantile`` of a histogram as a message carried it (a gateway's stats)."""
    return quantile(encode_histogram(record), q)
