"""What the gateways measure, read back from Redis.

Each gateway writes a snapshot of cumulative counters into the hash
``<KILN_ROUTING_KEY>:stats`` (one field per gateway) about once a second; the
format is ``inference_worker.contracts.gateway_stats``, the module the gateway
writes it with. Snapshots of all gateways add up.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import redis
from django.conf import settings

from config.redis import redis_client
from inference_worker.contracts.gateway_stats import (
    GatewaySnapshot,
    VariantStats,
    add_variant_stats,
    parse_snapshot,
)
from inference_worker.contracts.histograms import HistogramRecord

logger = logging.getLogger(__name__)


def stats_key() -> str:
    return f"{settings.KILN_ROUTING_KEY}:stats"


def read_snapshots() -> list[GatewaySnapshot]:
    """Every gateway's latest snapshot; an unreachable Redis gives none, an unreadable snapshot is skipped."""
    try:
        raw = redis_client().hgetall(stats_key())
    except redis.RedisError as exc:
        logger.warning("cannot read gateway stats: %s", exc)
        return []
    snapshots = []
    for gateway, value in raw.items():
        try:
            snapshots.append(parse_snapshot(json.loads(value)))
        except ValueError as exc:  # not JSON, or a ContractError naming the field
            logger.warning("skipping the stats of gateway %r: %s", gateway, exc)
    return snapshots


def variant_stats(
    deployment_name: str, snapshots: list[GatewaySnapshot] | None = None
) -> dict[str, VariantStats]:
    """Per variant of one deployment, the gateways' counters added up."""
    result: dict[str, VariantStats] = {}
    for snapshot in read_snapshots() if snapshots is None else snapshots:
        for name, stats in snapshot.deployments.get(deployment_name, {}).items():
            earlier = result.get(name)
            result[name] = stats if earlier is None else add_variant_stats(earlier, stats)
    return result


@dataclass(frozen=True)
class ShadowSummary:
    """How a shadow variant's answers agree with the live ones."""

    sent: int
    dropped: int
    errors: int
    compared: int
    argmax_agreement: float | None
    """Share of classification rows whose argmax equals the live one (None: nothing classified)."""
    mean_max_abs_diff: float
    max_abs_diff: float
    latency_ms: HistogramRecord
    live_latency_ms: HistogramRecord


def shadow_summary(stats: VariantStats | None) -> ShadowSummary | None:
    """Agreement of a shadow variant with the live answers, or None when it compared nothing."""
    shadow = stats.shadow if stats is not None else None
    if shadow is None or not shadow.compared:
        return None
    return ShadowSummary(
        sent=shadow.sent,
        dropped=shadow.dropped,
        errors=shadow.errors,
        compared=shadow.compared,
        argmax_agreement=shadow.argmax_equal / shadow.argmax_compared if shadow.argmax_compared else None,
        mean_max_abs_diff=shadow.max_abs_diff_sum / shadow.compared,
        max_abs_diff=shadow.max_abs_diff_max,
        latency_ms=shadow.latency_ms,
        live_latency_ms=shadow.live_latency_ms,
    )
