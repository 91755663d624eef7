"""What the gateways measure, read back from Redis.

Each gateway writes a JSON snapshot of cumulative counters into the hash
``<KILN_ROUTING_KEY>:stats`` (one field per gateway) about once a second::

    {"gateway_id": "host-123", "started_at": 1732700000.0, "updated_at": 1732700100.5,
     "deployments": {"fraud": {"variants": {"b": {
        "version": 4, "requests": 120, "responses": {"200": 118, "503": 2}, "retries": 1,
        "latency_ms": {"le": [0.5, 1, ..., "+Inf"], "counts": [...]},
        "shadow": {"sent": 60, "dropped": 0, "errors": 0, "compared": 60,
                   "argmax_compared": 60, "argmax_equal": 59,
                   "max_abs_diff_sum": 0.12, "max_abs_diff_max": 0.01,
                   "latency_ms": {...}, "live_latency_ms": {...}}}}}}}

Counters are cumulative since the gateway started; snapshots of all gateways add up.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from django.conf import settings

from config.redis import redis_client
from deployments.histograms import merge

logger = logging.getLogger(__name__)

_COUNTERS = ("requests", "retries")
_SHADOW_COUNTERS = (
    "sent",
    "dropped",
    "errors",
    "compared",
    "argmax_compared",
    "argmax_equal",
    "max_abs_diff_sum",
)


def stats_key() -> str:
    return f"{settings.KILN_ROUTING_KEY}:stats"


def read_snapshots() -> list[dict[str, Any]]:
    """Every gateway's latest snapshot; an unreachable Redis gives none."""
    try:
        raw = redis_client().hgetall(stats_key())
    except redis.RedisError as exc:
        logger.warning("cannot read gateway stats: %s", exc)
        return []
    snapshots = []
    for value in raw.values():
        try:
            snapshots.append(json.loads(value))
        except ValueError:
            continue
    return snapshots


def variant_stats(
    deployment_name: str, snapshots: list[dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per variant of one deployment, the gateways' counters added up."""
    result: dict[str, dict[str, Any]] = {}
    for snapshot in read_snapshots() if snapshots is None else snapshots:
        variants = ((snapshot.get("deployments") or {}).get(deployment_name) or {}).get("variants") or {}
        for name, stats in variants.items():
            if isinstance(stats, dict):
                result[name] = _add(result.get(name, {}), stats)
    return result


def _add(into: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key in _COUNTERS:
        out[key] = int(out.get(key, 0)) + int(stats.get(key, 0) or 0)
    responses = dict(out.get("responses", {}))
    for code, count in (stats.get("responses") or {}).items():
        responses[str(code)] = responses.get(str(code), 0) + int(count)
    out["responses"] = responses
    out["latency_ms"] = merge([out.get("latency_ms", {}), stats.get("latency_ms") or {}])
    out["version"] = stats.get("version", out.get("version"))
    shadow_in = stats.get("shadow") or {}
    if shadow_in:
        shadow = dict(out.get("shadow", {}))
        for key in _SHADOW_COUNTERS:
            shadow[key] = float(shadow.get(key, 0)) + float(shadow_in.get(key, 0) or 0)
        shadow["max_abs_diff_max"] = max(
            float(shadow.get("max_abs_diff_max", 0.0)), float(shadow_in.get("max_abs_diff_max", 0.0) or 0.0)
        )
        for key in ("latency_ms", "live_latency_ms"):
            shadow[key] = merge([shadow.get(key, {}), shadow_in.get(key) or {}])
        out["shadow"] = shadow
    return out


def shadow_summary(stats: dict[str, Any]) -> dict[str, Any] | None:
    """Agreement of a shadow variant with the live answers, or None when it compared nothing."""
    shadow = stats.get("shadow") or {}
    compared = int(shadow.get("compared", 0))
    if not compared:
        return None
    argmax_compared = int(shadow.get("argmax_compared", 0))
    return {
        "sent": int(shadow.get("sent", 0)),
        "dropped": int(shadow.get("dropped", 0)),
        "errors": int(shadow.get("errors", 0)),
        "compared": compared,
        "argmax_agreement": (shadow.get("argmax_equal", 0) / argmax_compared) if argmax_compared else None,
        "mean_max_abs_diff": float(shadow.get("max_abs_diff_sum", 0.0)) / compared,
        "max_abs_diff": float(shadow.get("max_abs_diff_max", 0.0)),
        "latency_ms": shadow.get("latency_ms") or {},
        "live_latency_ms": shadow.get("live_latency_ms") or {},
    }
