"""Reads of deployments with their joins set once."""

from __future__ import annotations

import statistics
from typing import Any

from django.db.models import Prefetch, QuerySet

from deployments.autoscaling.models import ScalingDecision
from deployments.errors import (
    DeploymentBusyError,
    DeploymentNotFoundError,
    RolloutNotFoundError,
    VariantNotFoundError,
)
from deployments.models import (
    LIVE_WORKER_STATES,
    Deployment,
    Rollout,
    Variant,
    Worker,
    WorkerImage,
    WorkerState,
)
from registry.errors import InvalidSignatureError
from registry.permissions import ensure_can_change
from registry.signature import parse_signature, request_differences

VISIBLE_WORKER_STATES = (*LIVE_WORKER_STATES, WorkerState.DRAINING, WorkerState.FAILED)
RECENT_DECISIONS = 10


def deployments() -> QuerySet[Deployment]:
    """Deployments with model, variants (and their versions) and visible workers."""
    workers = Worker.objects.filter(state__in=VISIBLE_WORKER_STATES).select_related("version").order_by("id")
    images = WorkerImage.objects.order_by("-created_at", "-id")
    decisions = ScalingDecision.objects.order_by("-created_at", "-id")[:RECENT_DECISIONS]
    variants = (
        Variant.objects.select_related("version", "pinned_version", "autoscaling")
        .prefetch_related(
            Prefetch("workers", queryset=workers, to_attr="visible_workers"),
            Prefetch("scaling", queryset=decisions, to_attr="recent_decisions"),
            Prefetch("version__worker_images", queryset=images, to_attr="images_newest_first"),
        )
        .order_by("id")
    )
    return Deployment.objects.select_related("model", "created_by").prefetch_related(
        Prefetch("variants", queryset=variants)
    )


def recent_decisions(variant: Variant) -> list[ScalingDecision]:
    """The autoscaler's last decisions for ``variant``, newest first (prefetched by ``deployments()``)."""
    found = getattr(variant, "recent_decisions", None)
    if found is not None:
        return list(found)
    return list(variant.scaling.order_by("-created_at", "-id")[:RECENT_DECISIONS])


def cold_start_s(version_id: int) -> float | None:
    """Median seconds from start to ready of the version's last 20 workers (None: none was ready yet)."""
    rows = (
        Worker.objects.filter(version_id=version_id, started_at__isnull=False, ready_at__isnull=False)
        .order_by("-ready_at")
        .values_list("started_at", "ready_at")[:20]
    )
    seconds = [(ready - started).total_seconds() for started, ready in rows if ready and started]
    return round(statistics.median(seconds), 3) if seconds else None


def ready_replicas(variant: Variant) -> int:
    """Ready workers of a variant, counted in the prefetched ``visible_workers`` when the read set them."""
    workers = getattr(variant, "visible_workers", None)
    if workers is None:
        return variant.workers.filter(state=WorkerState.READY).count()
    return sum(1 for w in workers if w.state == WorkerState.READY)


def get_deployment(name: str) -> Deployment:
    deployment = deployments().filter(name=name).first()
    if deployment is None:
        raise DeploymentNotFoundError(f"no deployment named {name!r}")
    return deployment


def get_variant(deployment_name: str, variant_name: str) -> Variant:
    variant = (
        Variant.objects.select_related("deployment__model", "version")
        .filter(deployment__name=deployment_name, name=variant_name)
        .first()
    )
    if variant is None:
        get_deployment(deployment_name)
        raise VariantNotFoundError(f"deployment {deployment_name!r} has no variant {variant_name!r}")
    return variant


def deployment_for_change(name: str, user: Any, *, deleting_ok: bool = False) -> Deployment:
    """The deployment ``name`` for a change by ``user``.

    404 when there is none, 403 when ``user`` may not change its model, 409 while it is being
    deleted (the reconcile loop owns it until it is gone).
    """
    deployment = get_deployment(name)
    ensure_can_change(user, deployment.model)
    if not deleting_ok:
        deployment.ensure_changeable()
    return deployment


def variant_for_change(
    deployment_name: str, variant_name: str, user: Any, *, removing_ok: bool = False
) -> Variant:
    """A variant for a change by ``user``: 404, 403, or 409 while it or its deployment is going."""
    variant = get_variant(deployment_name, variant_name)
    ensure_can_change(user, variant.deployment.model)
    variant.deployment.ensure_changeable()
    if variant.remove_requested_at is not None and not removing_ok:
        raise DeploymentBusyError(f"variant {variant_name!r} is being removed")
    return variant


def get_rollout(deployment_name: str, rollout_id: int) -> Rollout:
    rollout = (
        Rollout.objects.select_related("deployment__model", "candidate", "baseline")
        .filter(deployment__name=deployment_name, pk=rollout_id)
        .first()
    )
    if rollout is None:
        get_deployment(deployment_name)
        raise RolloutNotFoundError(f"deployment {deployment_name!r} has no rollout {rollout_id}")
    return rollout


def rollout_for_change(deployment_name: str, rollout_id: int, user: Any) -> Rollout:
    """A rollout of a deployment for a change by ``user`` (404, 403, 409 as above)."""
    rollout = get_rollout(deployment_name, rollout_id)
    ensure_can_change(user, rollout.deployment.model)
    rollout.deployment.ensure_changeable()
    return rollout


def signature_warnings(deployment: Deployment) -> list[str]:
    """Where a candidate's version differs from the stable variant's in what a request sends or
    an answer holds: a client of the endpoint is routed to either."""
    variants = list(deployment.variants.all())
    stable = next((v for v in variants if v.is_stable), None)
    if stable is None or stable.version is None:
        return []
    warnings = []
    for variant in variants:
        if variant.version is None or variant.version_id == stable.version_id:
            continue
        try:
            found = request_differences(
                parse_signature(stable.version.signature), parse_signature(variant.version.signature)
            )
        except InvalidSignatureError:
            continue
        if found:
            warnings.append(
                f"variants {stable.name!r} (v{stable.version.version}) and {variant.name!r} "
                f"(v{variant.version.version}) take different requests ({'; '.join(found)}): a request "
                "one answers, the other may refuse"
            )
    return warnings
