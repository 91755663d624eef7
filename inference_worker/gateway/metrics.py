"""The gateway's counters: one ``Series`` per (deployment, variant, version).

Updated on the event loop thread only (a few additions and a bisect per
request, no labels looked up on the hot path beyond one dict get). Two views
are built from the same counters: the Prometheus exposition at ``/metrics``
(``GatewayCollector``) and the cumulative snapshot the platform reads from
Redis (``snapshot``, a ``contracts.gateway_stats`` record).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference_worker.contracts.gateway_stats import (
    GatewaySnapshot,
    ShadowStats,
    VariantStats,
    add_variant_stats,
)
from inference_worker.contracts.histograms import HistogramRecord
from inference_worker.metrics import LATENCY_BUCKETS, Histogram

DIFF_BUCKETS: tuple[float, ...] = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
"""Max absolute difference of a shadow output: exactly 0 has a bucket of its own."""
LABELS = ["deployment", "variant", "version"]


class Series:
    """Counters and histograms of one deployment variant at one model version."""

    __slots__ = (
        "argmax_compared",
        "argmax_equal",
        "deployment",
        "latency",
        "max_abs_diff",
        "max_abs_diff_max",
        "max_abs_diff_sum",
        "responses",
        "retries",
        "shadow_compared",
        "shadow_dropped",
        "shadow_errors",
        "shadow_latency",
        "shadow_live_latency",
        "shadow_sent",
        "variant",
        "version",
    )

    def __init__(self, deployment: str, variant: str, version: str) -> None:
        self.deployment = deployment
        self.variant = variant
        self.version = version
        self.responses: dict[int, int] = {}
        self.retries = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.shadow_sent = 0
        self.shadow_dropped = 0
        self.shadow_errors = 0
        self.shadow_compared = 0
        self.argmax_compared = 0
        self.argmax_equal = 0
        self.max_abs_diff_sum = 0.0
        self.max_abs_diff_max = 0.0
        self.max_abs_diff: dict[str, Histogram] = {}
        self.shadow_latency = Histogram(LATENCY_BUCKETS)
        self.shadow_live_latency = Histogram(LATENCY_BUCKETS)

    @property
    def requests(self) -> int:
        return sum(self.responses.values())

    def answered(self, status: int, seconds: float) -> None:
        """A client got its answer ``seconds`` after its request was read."""
        responses = self.responses
        responses[status] = responses.get(status, 0) + 1
        self.latency.observe(seconds)

    def compared(self, diffs: dict[str, float], rows: int, equal: int) -> None:
        """A shadow answer compared with the live one: per-output max abs diff, argmax rows and agreements."""
        self.shadow_compared += 1
        worst = max(diffs.values(), default=0.0)
        self.max_abs_diff_sum += worst
        self.max_abs_diff_max = max(self.max_abs_diff_max, worst)
        for output, diff in diffs.items():
            histogram = self.max_abs_diff.get(output)
            if histogram is None:
                histogram = self.max_abs_diff[output] = Histogram(DIFF_BUCKETS)
            histogram.observe(diff)
        self.argmax_compared += rows
        self.argmax_equal += equal


_SHADOW_FIELDS = (
    "shadow_sent",
    "shadow_errors",
    "shadow_compared",
    "argmax_compared",
    "argmax_equal",
    "max_abs_diff_sum",
    "max_abs_diff_max",
)


def shadow_state(series: Series) -> dict[str, Any]:
    """The shadow counters of ``series``, as the shadow process reports them to the gateway."""
    state: dict[str, Any] = {name: getattr(series, name) for name in _SHADOW_FIELDS}
    state["latency"] = _histogram_state(series.shadow_latency)
    state["live_latency"] = _histogram_state(series.shadow_live_latency)
    state["diff"] = {output: _histogram_state(h) for output, h in series.max_abs_diff.items()}
    return state


def apply_shadow_state(series: Series, state: dict[str, Any]) -> None:
    """Replace the shadow counters of ``series`` with a (cumulative) reported state."""
    for name in _SHADOW_FIELDS:
        setattr(series, name, state[name])
    _set_histogram(series.shadow_latency, state["latency"])
    _set_histogram(series.shadow_live_latency, state["live_latency"])
    for output, histogram in state["diff"].items():
        if output not in series.max_abs_diff:
            series.max_abs_diff[output] = Histogram(DIFF_BUCKETS)
        _set_histogram(series.max_abs_diff[output], histogram)


def _histogram_state(histogram: Histogram) -> dict[str, Any]:
    return {"counts": histogram.counts, "total": histogram.total, "count": histogram.count}


def _set_histogram(histogram: Histogram, state: dict[str, Any]) -> None:
    if len(state["counts"]) == len(histogram.counts):
        histogram.counts = [int(c) for c in state["counts"]]
        histogram.total = float(state["total"])
        histogram.count = int(state["count"])


class GatewayMetrics:
    """Every series, plus the routing table's own gauges."""

    def __init__(self) -> None:
        self.series_by_key: dict[tuple[str, str, str], Series] = {}
        self.table_version = 0
        self.table_loaded_at = 0.0
        self.reloads: dict[str, int] = {"applied": 0, "unchanged": 0, "failed": 0}
        self.outstanding: Callable[[], dict[str, float]] = dict
        self.held: Callable[[], dict[tuple[str, str], int]] = dict

    def series(self, deployment: str, variant: str, version: str) -> Series:
        key = (deployment, variant, version)
        found = self.series_by_key.get(key)
        if found is None:
            found = self.series_by_key[key] = Series(deployment, variant, version)
        return found

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GatewayCollector(self))
        return registry

    def render(self, registry: CollectorRegistry) -> bytes:
        return generate_latest(registry)

    def snapshot(
        self, gateway_id: str, started_at: float, in_flight: Mapping[tuple[str, str], int] | None = None
    ) -> GatewaySnapshot:
        """The cumulative snapshot the platform reads (``contracts.gateway_stats``), with the gauges.

        ``in_flight``: requests at each (deployment, variant)'s replicas now; held requests come
        from ``held``. A variant with a gauge but no answer yet still gets its entry.
        """
        deployments: dict[str, dict[str, VariantStats]] = {}
        for series in self.series_by_key.values():
            variants = deployments.setdefault(series.deployment, {})
            stats = _stats(series)
            earlier = variants.get(series.variant)
            variants[series.variant] = stats if earlier is None else add_variant_stats(earlier, stats)
        held = self.held()
        for key in {*(in_flight or {}), *held}:
            variants = deployments.setdefault(key[0], {})
            stats = variants.get(key[1], VariantStats())
            variants[key[1]] = replace(stats, in_flight=(in_flight or {}).get(key, 0), held=held.get(key, 0))
        return GatewaySnapshot(gateway_id, started_at, time.time(), self.table_version, deployments)


def _stats(s: Series) -> VariantStats:
    """One series as the stats of its variant (the versions of a variant are added up by the caller)."""
    return VariantStats(
        version=int(s.version) if s.version.isdigit() else s.version,
        requests=s.requests,
        responses={str(status): count for status, count in s.responses.items()},
        retries=s.retries,
        latency_ms=_ms(s.latency),
        busy_s=s.latency.total,
        shadow=ShadowStats(
            sent=s.shadow_sent,
            dropped=s.shadow_dropped,
            errors=s.shadow_errors,
            compared=s.shadow_compared,
            argmax_compared=s.argmax_compared,
            argmax_equal=s.argmax_equal,
            max_abs_diff_sum=s.max_abs_diff_sum,
            max_abs_diff_max=s.max_abs_diff_max,
            latency_ms=_ms(s.shadow_latency),
            live_latency_ms=_ms(s.shadow_live_latency),
        ),
    )


def _ms(histogram: Histogram) -> HistogramRecord:
    """Bounds in milliseconds; the counts as they are (non-cumulative, the last is +Inf)."""
    return HistogramRecord(tuple(round(b * 1000, 6) for b in histogram.bounds), tuple(histogram.counts))


class GatewayCollector(Collector):
    """The Prometheus families, built at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        all_series = list(self._m.series_by_key.values())
        yield from _counters(all_series)
        yield from _histograms(all_series)
        m = self._m
        gauges: tuple[tuple[str, str, float], ...] = (
            ("kiln_gateway_routing_table_version", "Version of the routing table in use.", m.table_version),
            ("kiln_gateway_routing_table_loaded_timestamp_seconds", "Applied at.", m.table_loaded_at),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge
        reloads = CounterMetricFamily(
            "kiln_gateway_routing_reloads", "Routing table reads, by result.", labels=["result"]
        )
        for result, count in m.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        outstanding = GaugeMetricFamily(
            "kiln_gateway_upstream_outstanding_requests", "Requests sent to a replica and not answered.",
            labels=["replica"],
        )  # fmt: skip
        for url, pending in m.outstanding().items():
            outstanding.add_metric([url], pending)
        yield outstanding
        held = GaugeMetricFamily(
            "kiln_gateway_held_requests", "Requests waiting for a replica of a variant scaled to zero.",
            labels=["deployment", "variant"],
        )  # fmt: skip
        for (deployment, variant), count in m.held().items():
            held.add_metric([deployment, variant], count)
        yield held


def _values(s: Series) -> list[str]:
    return [s.deployment, s.variant, s.version]


def _counters(all_series: list[Series]) -> Iterator[Metric]:
    responses = CounterMetricFamily(
        "kiln_gateway_responses", "Answers to clients, by HTTP status.", labels=[*LABELS, "code"]
    )
    for s in all_series:
        for status, count in sorted(s.responses.items()):
            responses.add_metric([*_values(s), str(status)], count)
    yield responses
    for name, doc, attribute in (
        ("kiln_gateway_requests", "Requests routed to the variant and answered.", "requests"),
        ("kiln_gateway_upstream_retries", "Requests retried on another replica.", "retries"),
        ("kiln_gateway_shadow_requests", "Copies sent to the shadow variant.", "shadow_sent"),
        ("kiln_gateway_shadow_dropped", "Copies dropped: the shadow queue was full.", "shadow_dropped"),
        (
            "kiln_gateway_shadow_errors",
            "Shadow answers that failed or could not be compared.",
            "shadow_errors",
        ),
        ("kiln_gateway_shadow_compared", "Shadow answers compared with the live answer.", "shadow_compared"),
        ("kiln_gateway_shadow_argmax_rows", "Classification rows compared (argmax).", "argmax_compared"),
        ("kiln_gateway_shadow_argmax_agreements", "Rows whose argmax equals the live one.", "argmax_equal"),
    ):
        family = CounterMetricFamily(name, doc, labels=LABELS)
        for s in all_series:
            family.add_metric(_values(s), float(getattr(s, attribute)))
        yield family


def _histograms(all_series: list[Series]) -> Iterator[Metric]:
    for name, doc, attribute in (
        ("kiln_gateway_request_duration_seconds", "Request read to answer written.", "latency"),
        ("kiln_gateway_shadow_duration_seconds", "Shadow copy sent to its answer.", "shadow_latency"),
        (
            "kiln_gateway_shadow_live_duration_seconds",
            "Latency of the live requests that were mirrored, to set beside the shadow's.",
            "shadow_live_latency",
        ),
    ):
        families = [getattr(s, attribute).family(name, doc, LABELS, _values(s)) for s in all_series]
        yield from _merge_families(families)
    diffs = [
        histogram.family(
            "kiln_gateway_shadow_max_abs_diff",
            "Max absolute difference between shadow and live output values, per output.",
            [*LABELS, "output"],
            [*_values(s), output],
        )
        for s in all_series
        for output, histogram in s.max_abs_diff.items()
    ]
    yield from _merge_families(diffs)


def _merge_families(families: Sequence[Metric]) -> Iterator[Metric]:
    """One family holding the samples of per-series families of the same name."""
    if not families:
        return
    merged = families[0]
    for family in families[1:]:
        merged.samples.extend(family.samples)
    yield merged
