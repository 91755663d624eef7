"""What each autoscaler tick observes: the gateways' stats, their activation requests, the window.

The gateways write their stats to Redis about once a second (``contracts.gateway_stats``); a
tick adds up every gateway's counters for a variant into a ``Sample`` and appends it to the
variant's window, a Redis list trimmed to the longest window the policy needs. Gauges (in
flight, held) count only from snapshots written in the last ``STALE_S`` seconds: a gateway that
died mid-request must not keep a variant awake.
"""

from __future__ import annotations

import contextlib
import json
import logging

import redis
from django.conf import settings

from config.redis import redis_client
from deployments.autoscaling.decide import Sample
from inference_worker.contracts.activation import activation_key, parse_activation
from inference_worker.contracts.gateway_stats import GatewaySnapshot

logger = logging.getLogger(__name__)

STALE_S = 5.0


def observe(snapshots: list[GatewaySnapshot], deployment: str, variant: str, now: float) -> Sample:
    """The variant's load in ``snapshots``, every gateway added up."""
    busy_s, requests, in_flight = 0.0, 0, 0
    written: list[float] = []
    for snapshot in snapshots:
        stats = snapshot.deployments.get(deployment, {}).get(variant)
        if stats is None:
            continue
        busy_s += stats.busy_s
        requests += stats.requests
        written.append(snapshot.updated_at)
        if now - snapshot.updated_at <= STALE_S:
            in_flight += stats.in_flight + stats.held
    counted_at = sum(written) / len(written) if written else None
    return Sample(at=now, busy_s=busy_s, requests=requests, in_flight=float(in_flight), counted_at=counted_at)


def window_key(variant_id: int) -> str:
    return f"{settings.KILN_ROUTING_KEY}:autoscale:{variant_id}"


def remember(variant_id: int, sample: Sample, *, keep_s: float) -> list[Sample]:
    """Append ``sample`` to the variant's window and return the window (oldest first, ``keep_s`` long)."""
    key = window_key(variant_id)
    row = json.dumps([sample.at, sample.busy_s, sample.requests, sample.in_flight, sample.counted_at])
    try:
        client = redis_client()
        pipe = client.pipeline()
        pipe.rpush(key, row)
        pipe.lrange(key, 0, -1)
        _, raw = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("cannot keep the autoscaling window of variant %s: %s", variant_id, exc)
        return [sample]
    samples = []
    for item in raw:
        at, busy_s, requests, in_flight, *counted = json.loads(item)  # rows of an older release: 4 fields
        counted_at = counted[0] if counted else None
        samples.append(
            Sample(at=at, busy_s=busy_s, requests=requests, in_flight=in_flight, counted_at=counted_at)
        )
    old = sum(1 for s in samples if s.at < sample.at - keep_s)
    if old > 1:  # keep one sample older than the window: the base of its busy-seconds growth
        with contextlib.suppress(redis.RedisError):
            client.ltrim(key, old - 1, -1)
        samples = samples[old - 1 :]
    return samples


def forget(variant_id: int) -> None:
    """Drop a variant's window (its policy went, or changed)."""
    try:
        redis_client().delete(window_key(variant_id))
    except redis.RedisError as exc:
        logger.warning("cannot drop the autoscaling window of variant %s: %s", variant_id, exc)


def take_activations() -> set[tuple[str, str]]:
    """The (deployment, variant) pairs gateways asked a replica for since the last tick; cleared."""
    key = activation_key(settings.KILN_ROUTING_KEY)
    try:
        client = redis_client()
        raw = client.hgetall(key)
        if raw:
            client.hdel(key, *raw)
    except redis.RedisError as exc:
        logger.warning("cannot read activation requests: %s", exc)
        return set()
    wanted = set()
    for field, value in raw.items():
        try:
            request = parse_activation(json.loads(value))
        except ValueError as exc:  # not JSON, or a ContractError naming the field
            logger.warning("skipping the activation request %r: %s", field, exc)
            continue
        wanted.add((request.deployment, request.variant))
    return wanted
