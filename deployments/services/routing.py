"""The routing table the gateway serves from, published to Redis.

The table is a JSON string at key ``KILN_ROUTING_KEY``; a message on the
channel of the same name announces each new one. Its format is
``inference_worker.contracts.routing`` (the gateway reads it through the same
module). Only ready workers of running deployments are listed. The table is
rebuilt whole from the database and swapped whole, so a missed message heals
at the gateway's next periodic reload.

A publication can be lost (Redis down when a traffic change commits). The
reconcile loop therefore calls ``converge_routing_table`` on every pass: it
compares the digest of the database's table with the table in Redis and with
the table every live gateway says it holds (``contracts.gateway_table``), and
publishes again until all of them agree.
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
from inference_worker.contracts.gateway_table import GatewayTableRecord, parse_gateway_table, tables_key
from inference_worker.contracts.routing import (
    DeploymentRecord,
    ReplicaRecord,
    TableRecord,
    VariantRecord,
    encode_table,
    parse_table,
    table_digest,
)

logger = logging.getLogger(__name__)

GATEWAY_GONE_S = 30.0
"""A gateway whose record is older than this is gone (stopped, killed) and no longer waited for."""


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
    return _publish(build_routing_table())


def _publish(table: TableRecord) -> TableRecord:
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


def converge_routing_table() -> bool:
    """Publish the database's table when Redis or a live gateway holds another; True when it did.

    Redis being down is logged (the next pass tries again); a gateway that refuses the table
    keeps it published on every pass, and is logged.
    """
    table = build_routing_table()
    wanted = table_digest(table)
    try:
        client = redis_client()
        stored = client.get(settings.KILN_ROUTING_KEY)
        reports = client.hgetall(tables_key(settings.KILN_ROUTING_KEY))
    except redis.RedisError as exc:
        logger.warning("cannot compare the routing tables: %s", exc)
        return False
    behind = sorted(
        record.gateway_id
        for record in map(_gateway_record, reports.values())
        if record is not None
        and time.time() - record.reported_at <= GATEWAY_GONE_S
        and record.table_digest != wanted
    )
    if _stored_digest(stored) == wanted and not behind:
        return False
    if behind:
        logger.info("gateway(s) %s hold another routing table; publishing it again", ", ".join(behind))
    _publish(table)
    return True


def _stored_digest(payload: bytes | str | None) -> str | None:
    if payload is None:
        return None
    try:
        return table_digest(parse_table(json.loads(payload)))
    except ValueError:  # not JSON, or a ContractError: replaced by a good one
        return None


def _gateway_record(payload: bytes | str) -> GatewayTableRecord | None:
    try:
        return parse_gateway_table(json.loads(payload))
    except ValueError as exc:
        logger.warning("skipping a gateway's table record: %s", exc)
        return None
