"""The routing table the gateway serves from, published to Redis.

The table is a JSON string at key ``KILN_ROUTING_KEY``; a message on the
channel of the same name announces each new one. Its format is
``inference_worker.contracts.routing`` (the gateway reads it through the same
module). Only ready workers of running deployments are listed. The table is
rebuilt whole from the database and swapped whole, so a missed message heals
at the gateway's next periodic reload.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from django.conf import settings
from django.db.models import Prefetch
from django.utils import timezone

from config.redis import redis_client
from deployments.autoscaling.models import ScalingPolicy
from deployments.models import Deployment, Variant, Worker, WorkerState
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.routing import (
    DeploymentRecord,
    ReplicaRecord,
    TableRecord,
    VariantRecord,
    encode_table,
)

logger = logging.getLogger(__name__)


def build_routing_table() -> TableRecord:
    """The whole table, from the database."""
    ready = (
        Worker.objects.filter(state=WorkerState.READY, variant__deployment__desired_running=True)
        .select_related("variant__deployment", "version")
        .order_by("id")
    )
    by_variant: dict[int, list[Worker]] = {}
    for worker in ready:
        by_variant.setdefault(worker.variant_id, []).append(worker)
    running = (
        Deployment.objects.filter(desired_running=True)
        .select_related("model")
        .prefetch_related(Prefetch("variants", queryset=Variant.objects.select_related("autoscaling")))
    )
    deployments = {}
    for deployment in running:
        variants = []
        for variant in deployment.variants.all():
            if variant.remove_requested_at is not None:
                continue  # being removed: its workers drain
            workers = by_variant.get(variant.pk, [])
            replicas = tuple(replica for replica in map(_replica, workers) if replica is not None)
            version = variant.version.version if workers == [] else _served_version(workers)
            variants.append(
                VariantRecord(
                    name=variant.name,
                    model_name=deployment.name,
                    version=str(version),
                    weight=variant.weight,
                    shadow_percent=variant.shadow_percent,
                    replicas=replicas,
                    activate=_scales_to_zero(variant),
                )
            )
        deployments[deployment.name] = DeploymentRecord(model=deployment.model.name, variants=tuple(variants))
    return TableRecord(
        version=time.time_ns() // 1_000_000,
        deployments=deployments,
        generated_at=timezone.now().isoformat(),
    )


def _replica(worker: Worker) -> ReplicaRecord | None:
    """The worker as a replica of the table; one with an address no gateway can use is left out, logged."""
    try:
        return ReplicaRecord(
            url=worker.http_url, id=worker.pk, grpc=worker.grpc_target, version=str(worker.version.version)
        )
    except ContractError as exc:
        logger.warning("worker %s is left out of the routing table: %s", worker.pk, exc)
        return None


def _scales_to_zero(variant: Variant) -> bool:
    """An autoscaled variant with a minimum of 0: gateways hold its requests while it has no replica."""
    policy: ScalingPolicy | None = getattr(variant, "autoscaling", None)
    return policy is not None and policy.min_replicas == 0


def _served_version(workers: list[Worker]) -> int:
    """During a rolling update both versions serve; the newest is the variant's label."""
    return max(w.version.version for w in workers)


def publish_routing_table() -> TableRecord:
    """Rebuild the table and publish it; Redis being down is logged, never raised."""
    table = build_routing_table()
    payload = json.dumps(encode_table(table), separators=(",", ":"))
    try:
        client = redis_client()
        pipe = client.pipeline()
        pipe.set(settings.KILN_ROUTING_KEY, payload)
        pipe.publish(settings.KILN_ROUTING_KEY, str(table.version))
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("could not publish the routing table: %s", exc)
    return table
