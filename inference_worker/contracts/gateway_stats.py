"""The gateway's stats: what each gateway counted, per deployment variant, for the platform to read.

Each gateway writes a snapshot into the Redis hash ``<routing key>:stats``
(one field per gateway id) about once a second::

    {"schema": "kiln.gateway-stats/v1", "gateway_id": "host-123", "started_at": 1732700000.0,
     "updated_at": 1732700100.5, "routing_table_version": 17,
     "deployments": {"fraud": {"variants": {"b": {
        "version": 4, "requests": 120, "responses": {"200": 118, "503": 2}, "retries": 1,
        "busy_s": 3.2, "in_flight": 3, "held": 0,
        "latency_ms": {"le": [0.5, 1, ..., "+Inf"], "counts": [...]},
        "shadow": {"sent": 60, "dropped": 0, "errors": 0, "compared": 60,
                   "argmax_compared": 60, "argmax_equal": 59,
                   "max_abs_diff_sum": 0.12, "max_abs_diff_max": 0.01,
                   "latency_ms": {...}, "live_latency_ms": {...}}}}}}}

Counters are cumulative since the gateway started, so the snapshots of all
gateways add up (``add_variant_stats``). ``busy_s`` is the time the answered
requests spent in the gateway, added up: its growth over a window divided by the
window is the mean number of requests in flight (Little's law), which the
autoscaler reads. ``in_flight`` (sent to a replica, not answered yet) and
``held`` (waiting in the activator for a replica of a variant scaled to zero)
are gauges of the moment of the snapshot. A variant's ``version`` is the newest
model version it served (during a rolling update it serves two).
Compatibility: snapshots without ``schema`` (from before it) read the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.histograms import HistogramRecord, encode_histogram, parse_histogram
from inference_worker.contracts.wire import at, integer, mapping, number, text

SCHEMA = "kiln.gateway-stats/v1"


@dataclass(frozen=True)
class ShadowStats:
    """How a shadow variant's answers compared with the live ones."""

    sent: int = 0
    dropped: int = 0
    errors: int = 0
    compared: int = 0
    argmax_compared: int = 0
    """Classification rows compared by argmax."""
    argmax_equal: int = 0
    max_abs_diff_sum: float = 0.0
    """Sum over compared answers of the largest absolute output difference (its mean: / compared)."""
    max_abs_diff_max: float = 0.0
    latency_ms: HistogramRecord = field(default_factory=HistogramRecord)
    live_latency_ms: HistogramRecord = field(default_factory=HistogramRecord)
    """Latency of the live requests that were copied, to set beside the shadow's."""


@dataclass(frozen=True)
class VariantStats:
    """One variant's answers through one gateway (or several, added up)."""

    version: int | str = ""
    requests: int = 0
    responses: Mapping[str, int] = field(default_factory=dict)
    """Answers by HTTP status code (as text)."""
    retries: int = 0
    latency_ms: HistogramRecord = field(default_factory=HistogramRecord)
    shadow: ShadowStats = field(default_factory=ShadowStats)
    busy_s: float = 0.0
    """Seconds the answered requests spent in the gateway, added up (cumulative)."""
    in_flight: int = 0
    """Requests sent to a replica and not answered yet (a gauge)."""
    held: int = 0
    """Requests waiting in the activator for a replica to start (a gauge)."""


@dataclass(frozen=True)
class GatewaySnapshot:
    """What one gateway counted since it started."""

    gateway_id: str
    started_at: float
    updated_at: float
    routing_table_version: int = 0
    deployments: Mapping[str, Mapping[str, VariantStats]] = field(default_factory=dict)
    """Variant stats by deployment, then by variant name."""


def version_order(version: int | str) -> tuple[int, str]:
    """Numbered versions by number, above any named one."""
    text_form = str(version)
    return (int(text_form), "") if text_form.isdigit() else (-1, text_form)


def add_shadow_stats(a: ShadowStats, b: ShadowStats) -> ShadowStats:
    return ShadowStats(
        sent=a.sent + b.sent,
        dropped=a.dropped + b.dropped,
        errors=a.errors + b.errors,
        compared=a.compared + b.compared,
        argmax_compared=a.argmax_compared + b.argmax_compared,
        argmax_equal=a.argmax_equal + b.argmax_equal,
        max_abs_diff_sum=a.max_abs_diff_sum + b.max_abs_diff_sum,
        max_abs_diff_max=max(a.max_abs_diff_max, b.max_abs_diff_max),
        latency_ms=a.latency_ms.plus(b.latency_ms),
        live_latency_ms=a.live_latency_ms.plus(b.live_latency_ms)
        if a.live_latency_ms.le
        else b.live_latency_ms,
    )


def add_variant_stats(a: VariantStats, b: VariantStats) -> VariantStats:
    """Both counts added up (two gateways, or two versions of a variant); the newer version labels it."""
    responses = dict(a.responses)
    for code, count in b.responses.items():
        responses[code] = responses.get(code, 0) + count
    return VariantStats(
        version=max(a.version, b.version, key=version_order) if a.version != "" else b.version,
        requests=a.requests + b.requests,
        responses=responses,
        retries=a.retries + b.retries,
        latency_ms=a.latency_ms.plus(b.latency_ms),
        shadow=add_shadow_stats(a.shadow, b.shadow),
        busy_s=a.busy_s + b.busy_s,
        in_flight=a.in_flight + b.in_flight,
        held=a.held + b.held,
    )


# -- JSON ---------------------------------------------------------------------------------------
def encode_snapshot(snapshot: GatewaySnapshot) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "gateway_id": snapshot.gateway_id,
        "started_at": snapshot.started_at,
        "updated_at": snapshot.updated_at,
        "routing_table_version": snapshot.routing_table_version,
        "deployments": {
            deployment: {"variants": {name: _encode_variant(stats) for name, stats in variants.items()}}
            for deployment, variants in snapshot.deployments.items()
        },
    }


def _encode_variant(stats: VariantStats) -> dict[str, Any]:
    shadow = stats.shadow
    return {
        "version": stats.version,
        "requests": stats.requests,
        "responses": dict(stats.responses),
        "retries": stats.retries,
        "latency_ms": encode_histogram(stats.latency_ms),
        "busy_s": stats.busy_s,
        "in_flight": stats.in_flight,
        "held": stats.held,
        "shadow": {
            "sent": shadow.sent,
            "dropped": shadow.dropped,
            "errors": shadow.errors,
            "compared": shadow.compared,
            "argmax_compared": shadow.argmax_compared,
            "argmax_equal": shadow.argmax_equal,
            "max_abs_diff_sum": shadow.max_abs_diff_sum,
            "max_abs_diff_max": shadow.max_abs_diff_max,
            "latency_ms": encode_histogram(shadow.latency_ms),
            "live_latency_ms": encode_histogram(shadow.live_latency_ms),
        },
    }


def parse_snapshot(payload: object) -> GatewaySnapshot:
    """One gateway's snapshot from its decoded JSON; ``ContractError`` names the first field refused."""
    snapshot = mapping(payload, "snapshot")
    if snapshot.get("schema", SCHEMA) != SCHEMA:
        raise ContractError("schema", f"expected {SCHEMA!r}, got {snapshot.get('schema')!r}")
    deployments: dict[str, dict[str, VariantStats]] = {}
    for deployment, entry in mapping(snapshot.get("deployments", {}), "deployments").items():
        where = at(at("deployments", deployment), "variants")
        variants = mapping(mapping(entry, at("deployments", deployment)).get("variants", {}), where)
        deployments[deployment] = {
            name: _parse_variant(item, at(where, name)) for name, item in variants.items()
        }
    return GatewaySnapshot(
        gateway_id=text(snapshot.get("gateway_id"), "gateway_id"),
        started_at=number(snapshot.get("started_at"), "started_at"),
        updated_at=number(snapshot.get("updated_at"), "updated_at"),
        routing_table_version=integer(snapshot.get("routing_table_version", 0), "routing_table_version"),
        deployments=deployments,
    )


def _count(item: dict[str, Any], key: str, where: str) -> int:
    return integer(item.get(key, 0), at(where, key), low=0)


def _parse_variant(payload: object, where: str) -> VariantStats:
    item = mapping(payload, where)
    version = item.get("version", "")
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise ContractError(at(where, "version"), "must be an integer or a string")
    responses = mapping(item.get("responses", {}), at(where, "responses"))
    shadow = mapping(item.get("shadow", {}), at(where, "shadow"))
    return VariantStats(
        version=version,
        requests=_count(item, "requests", where),
        responses={str(code): _count(responses, code, at(where, "responses")) for code in responses},
        retries=_count(item, "retries", where),
        latency_ms=_histogram(item, "latency_ms", where),
        shadow=_parse_shadow(shadow, at(where, "shadow")),
        busy_s=number(item.get("busy_s", 0.0), at(where, "busy_s"), low=0),
        in_flight=_count(item, "in_flight", where),
        held=_count(item, "held", where),
    )


def _parse_shadow(shadow: dict[str, Any], where: str) -> ShadowStats:
    return ShadowStats(
        sent=_count(shadow, "sent", where),
        dropped=_count(shadow, "dropped", where),
        errors=_count(shadow, "errors", where),
        compared=_count(shadow, "compared", where),
        argmax_compared=_count(shadow, "argmax_compared", where),
        argmax_equal=_count(shadow, "argmax_equal", where),
        max_abs_diff_sum=number(shadow.get("max_abs_diff_sum", 0.0), at(where, "max_abs_diff_sum"), low=0),
        max_abs_diff_max=number(shadow.get("max_abs_diff_max", 0.0), at(where, "max_abs_diff_max"), low=0),
        latency_ms=_histogram(shadow, "latency_ms", where),
        live_latency_ms=_histogram(shadow, "live_latency_ms", where),
    )


def _histogram(item: dict[str, Any], key: str, where: str) -> HistogramRecord:
    return HistogramRecord() if key not in item else parse_histogram(item[key], at(where, key))
