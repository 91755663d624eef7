"""The routing table the gateway serves from, published to Redis.

Format (JSON at key ``KILN_ROUTING_KEY``; a message on the channel of the same
name announces each new table)::

    {"version": 1732700000123, "generated_at": "...",
     "deployments": {
        "fraud": {"model": "fraud-model", "variants": [
            {"name": "primary", "model_name": "fraud", "version": 3, "weight": 90, "shadow_percent": 0,
             "replicas": [{"id": 12, "url": "http://127.0.0.1:40123", "grpc": "127.0.0.1:40124"}]}]}}}

Only ready workers of running deployments are listed. The table is rebuilt
whole from the database and swapped whole, so a missed message heals at the
gateway's next periodic reload.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from config.redis import redis_client
from deployments.models import Deployment, Worker, WorkerState

logger = logging.getLogger(__name__)


def build_routing_table() -> dict[str, Any]:
    """The whole table, from the database."""
    deployments: dict[str, Any] = {}
    ready = (
        Worker.objects.filter(state=WorkerState.READY, variant__deployment__desired_running=True)
        .select_related("variant__deployment", "version")
        .order_by("id")
    )
    by_variant: dict[int, list[Worker]] = {}
    for worker in ready:
        by_variant.setdefault(worker.variant_id, []).append(worker)
    running = (
        Deployment.objects.filter(desired_running=True).select_related("model").prefetch_related("variants")
    )
    for deployment in running:
        variants = []
        for variant in deployment.variants.all():
            if variant.remove_requested_at is not None:
                continue  # being removed: its workers drain
            workers = by_variant.get(variant.pk, [])
            variants.append(
                {
                    "name": variant.name,
                    "model_name": deployment.name,
                    "version": variant.version.version if workers == [] else _served_version(workers),
                    "weight": variant.weight,
                    "shadow_percent": variant.shadow_percent,
                    "replicas": [
                        {"id": w.pk, "url": w.http_url, "grpc": w.grpc_target, "version": w.version.version}
                        for w in workers
                    ],
                }
            )
        deployments[deployment.name] = {"model": deployment.model.name, "variants": variants}
    return {
        "version": time.time_ns() // 1_000_000,
        "generated_at": timezone.now().isoformat(),
        "deployments": deployments,
    }


def _served_version(workers: list[Worker]) -> int:
    """During a rolling update both versions serve; the newest is the variant's label."""
    return max(w.version.version for w in workers)


def publish_routing_table() -> dict[str, Any]:
    """Rebuild the table and publish it; Redis being down is logged, never raised."""
    table = build_routing_table()
    payload = json.dumps(table, separators=(",", ":"))
    try:
        client = redis_client()
        pipe = client.pipeline()
        pipe.set(settings.KILN_ROUTING_KEY, payload)
        pipe.publish(settings.KILN_ROUTING_KEY, str(table["version"]))
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("could not publish the routing table: %s", exc)
    return table
