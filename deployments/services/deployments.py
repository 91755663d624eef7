"""Creating, stopping, starting and deleting deployments."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments.backends import BackendError, get_backend, owns_placement
from deployments.errors import DuplicateDeploymentError, InvalidDeploymentError
from deployments.inputs import VariantSpec, VersionTarget, alias_move_policy, slug
from deployments.models import (
    AliasMovePolicy,
    Deployment,
    DeploymentStatus,
    Variant,
    VariantRole,
    WorkerState,
)
from deployments.services.batching import below, propose_batching, validate_batching
from deployments.services.events import enqueue_reconcile, record_deployment_event
from deployments.services.routing import publish_routing_table
from inference_worker.contracts.batching import MAX_BATCH_SIZE, PREFERRED_BATCH_SIZES, encode_batching
from registry.audit import Actor
from registry.models import Alias, ModelVersion, RegisteredModel, VersionStatus

logger = logging.getLogger(__name__)

MAX_VARIANTS = 8
"""Arms of one deployment: a split, its candidates and shadows (each a routed and reconciled set)."""


def variants_count_refusal(count: int) -> str | None:
    """Why a deployment cannot have ``count`` variants (None: it can)."""
    if count < 1:
        return "at least one variant is required"
    return f"at most {MAX_VARIANTS} variants" if count > MAX_VARIANTS else None


@dataclass(frozen=True)
class VariantTarget:
    """The version a variant serves and, when it follows one, the alias."""

    version: ModelVersion
    pinned: ModelVersion | None
    alias: str


def resolve_target(model: RegisteredModel, target: VersionTarget, prefix: str = "") -> VariantTarget:
    """The version a target names: it exists and is ready (an alias is followed to its version)."""
    if target.alias:
        alias = Alias.objects.select_related("version").filter(model=model, name=target.alias).first()
        if alias is None:
            raise InvalidDeploymentError(f"{prefix}alias: model {model.name!r} has no alias {target.alias!r}")
        version, pinned, alias_name = alias.version, None, target.alias
    else:
        found = ModelVersion.objects.filter(model=model, version=target.version or 0).first()
        if found is None:
            raise InvalidDeploymentError(
                f"{prefix}version: model {model.name!r} has no version {target.version}"
            )
        version, pinned, alias_name = found, found, ""
    if version.status != VersionStatus.READY:
        raise InvalidDeploymentError(
            f"{prefix}version: {version} is {version.status}, not ready; "
            "only converted versions can be deployed"
        )
    return VariantTarget(version=version, pinned=pinned, alias=alias_name)


def build_variant(
    deployment: Deployment, spec: VariantSpec, index: int, *, latency_budget_ms: float | None = None
) -> Variant:
    """An unsaved Variant from ``spec``: the domain's checks; errors name ``variants[i].field``."""
    prefix = f"variants[{index}]."
    name = spec.name or ("primary" if index == 0 else f"v{index}")
    target = resolve_target(deployment.model, spec.target, prefix)
    weight = spec.weight if spec.weight is not None else (100 if index == 0 else 0)
    backend_name = spec.backend or settings.KILN_DEFAULT_BACKEND
    try:
        get_backend(backend_name).check_spec(gpu_ids=spec.gpu_ids)
    except BackendError as exc:
        field = "device" if exc.code == "no_gpu" else "backend"
        raise InvalidDeploymentError(f"{prefix}{field}: {exc.message}") from None
    placement = spec.placement
    if placement and not owns_placement(get_backend(backend_name)):
        raise InvalidDeploymentError(
            f"{prefix}placement: only a backend that places replicas on several machines (swarm) takes it"
        )
    dynamic = bool((target.version.report or {}).get("dynamic_batch", True))
    budget = latency_budget_ms or settings.KILN_LATENCY_BUDGET_MS
    proposal = propose_batching(target.version.report or {}, latency_budget_ms=budget)
    given = dict(spec.batching)
    base = proposal.batching
    max_batch = given.get(MAX_BATCH_SIZE.name)
    if PREFERRED_BATCH_SIZES.name not in given and isinstance(max_batch, int):
        base = below(base, max_batch)  # the proposed sizes that still fit under the batch size given
    batching = validate_batching(given, base=base, prefix=f"{prefix}batching.", fixed_batch=not dynamic)
    note = proposal.note
    if given:
        note = f"Set by the user ({', '.join(sorted(given))}); the profile proposed: {note}"
    return Variant(
        deployment=deployment,
        name=name,
        pinned_version=target.pinned,
        alias=target.alias,
        version=target.version,
        weight=weight,
        replicas=spec.replicas,
        gpu_ids=list(spec.gpu_ids),
        backend=backend_name,
        placement_constraints=list(placement.constraints),
        placement_spread=list(placement.spread),
        batching_note=note,
        **encode_batching(batching),
    )


def check_weights(variants: list[Variant]) -> None:
    """The weights of a deployment's variants add up to 100."""
    total = sum(v.weight for v in variants)
    if total != 100:
        detail = ", ".join(f"{v.name}={v.weight}" for v in variants)
        raise InvalidDeploymentError(f"variants: weights must add up to 100, got {total} ({detail})")


def create_deployment(
    *,
    name: str,
    model: RegisteredModel,
    variants: Sequence[VariantSpec],
    actor: User,
    description: str = "",
    latency_budget_ms: float | None = None,
    on_alias_move: str = AliasMovePolicy.ROLLOUT,
) -> Deployment:
    """Create a deployment and its variants; the reconcile loop starts the replicas.

    The variant with the most traffic (the first on a tie) is the stable one.
    """
    slug(name, "name")
    alias_move_policy(on_alias_move)
    if refusal := variants_count_refusal(len(variants)):
        raise InvalidDeploymentError(f"variants: {refusal}")
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                name=name,
                model=model,
                description=description[:5000],
                created_by=actor,
                on_alias_move=on_alias_move,
            )
            built = [
                build_variant(deployment, spec, i, latency_budget_ms=latency_budget_ms)
                for i, spec in enumerate(variants)
            ]
            names = [v.name for v in built]
            if len(set(names)) != len(names):
                raise InvalidDeploymentError("variants: variant names must be unique")
            check_weights(built)
            max(built, key=lambda v: v.weight).role = VariantRole.STABLE
            for variant in built:
                variant.save()
            record_deployment_event(
                actor=actor,
                action="deployment.created",
                deployment=deployment,
                after={"variants": [describe_variant(v) for v in built]},
            )
            enqueue_reconcile(deployment)
    except IntegrityError:
        going = Deployment.objects.filter(name=name, delete_requested_at__isnull=False).exists()
        detail = "is being deleted; try again once it is gone" if going else "exists already"
        raise DuplicateDeploymentError(f"a deployment named {name!r} {detail}") from None
    return deployment


def describe_variant(variant: Variant) -> dict[str, Any]:
    """A variant as recorded in audit events."""
    return {
        "name": variant.name,
        "role": variant.role,
        "version": variant.version.version,
        "alias": variant.alias or None,
        "weight": variant.weight,
        "replicas": variant.replicas,
        "device": variant.device,
        "backend": variant.backend,
        **(
            {"placement": describe_placement(variant)}
            if variant.placement_constraints or variant.placement_spread
            else {}
        ),
    }


def describe_placement(variant: Variant) -> dict[str, list[str]]:
    return {"constraints": list(variant.placement_constraints), "spread": list(variant.placement_spread)}


@transaction.atomic
def set_deployment_running(*, deployment: Deployment, running: bool, actor: Actor) -> Deployment:
    """Stop (drain and stop every worker) or start a deployment again."""
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    locked.ensure_changeable()
    if locked.desired_running == running:
        return locked
    locked.desired_running = running
    locked.status = DeploymentStatus.DEPLOYING if running else locked.status
    locked.status_reason = ""
    locked.save(update_fields=["desired_running", "status", "status_reason", "updated_at"])
    if running:
        # A fresh start forgets old crash loops.
        for variant in locked.variants.all():
            variant.workers.filter(state=WorkerState.FAILED).update(state=WorkerState.STOPPED)
    record_deployment_event(
        actor=actor,
        action="deployment.started" if running else "deployment.stopped",
        deployment=locked,
        before={"running": not running},
        after={"running": running},
    )
    enqueue_reconcile(locked)
    return locked


@transaction.atomic
def set_alias_move_policy(*, deployment: Deployment, policy: str, actor: Actor) -> Deployment:
    """Choose what happens when the alias of a variant carrying traffic moves (audited)."""
    alias_move_policy(policy)
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    locked.ensure_changeable()
    if locked.on_alias_move != policy:
        before = locked.on_alias_move
        locked.on_alias_move = policy
        locked.save(update_fields=["on_alias_move", "updated_at"])
        record_deployment_event(
            actor=actor,
            action="deployment.alias_move_policy",
            deployment=locked,
            before={"on_alias_move": before},
            after={"on_alias_move": policy},
        )
    return locked


@transaction.atomic
def delete_deployment(*, deployment: Deployment, actor: Actor) -> Deployment:
    """Ask for ``deployment`` to go; it leaves the routing table at once.

    Deletion is desired state: the reconcile loop (the only code that touches workers) drains
    and stops its workers, then deletes the row with its history of workers and reports and
    records ``deployment.deleted``. Asking twice changes nothing.
    """
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if locked.delete_requested_at is not None:
        return locked
    locked.desired_running = False
    locked.delete_requested_at = timezone.now()
    locked.delete_requested_by = actor if isinstance(actor, User) else None
    locked.status = DeploymentStatus.DELETING
    locked.status_reason = "being deleted: workers are draining"
    locked.save(
        update_fields=[
            "desired_running",
            "delete_requested_at",
            "delete_requested_by",
            "status",
            "status_reason",
            "updated_at",
        ]
    )
    record_deployment_event(
        actor=actor,
        action="deployment.delete_requested",
        deployment=locked,
        before={"variants": [describe_variant(v) for v in locked.variants.all()]},
    )
    enqueue_reconcile(locked)
    transaction.on_commit(publish_routing_table)
    return locked


def add_variant(*, deployment: Deployment, spec: VariantSpec, actor: Actor) -> Variant:
    """Add an arm to a deployment at weight 0 (traffic moves through a split change)."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("model").get(pk=deployment.pk)
        locked.ensure_changeable()
        existing = list(locked.variants.all())
        if refusal := variants_count_refusal(len(existing) + 1):
            raise InvalidDeploymentError(f"variants: {refusal}")
        if spec.weight:
            raise InvalidDeploymentError(
                "weight: a new variant starts at weight 0; change the traffic split next"
            )
        variant = build_variant(locked, replace(spec, weight=0), len(existing))
        if any(v.name == variant.name for v in existing):
            raise DuplicateDeploymentError(f"name: variant {variant.name!r} exists already")
        variant.save()
        record_deployment_event(
            actor=actor, action="variant.added", deployment=locked, after=describe_variant(variant)
        )
        enqueue_reconcile(locked)
    return variant


@transaction.atomic
def remove_variant(*, variant: Variant, actor: Actor) -> Variant:
    """Ask for an arm without traffic to go; the reconcile loop drains its workers, then deletes it."""
    locked = (
        Variant.objects.select_for_update().select_related("deployment__model", "version").get(pk=variant.pk)
    )
    locked.deployment.ensure_changeable()
    if locked.remove_requested_at is not None:
        return locked
    if locked.weight or locked.shadow_percent:
        raise InvalidDeploymentError(
            f"variant {locked.name!r} still has weight {locked.weight} and shadow {locked.shadow_percent}%; "
            "move its traffic first"
        )
    others = locked.deployment.variants.filter(remove_requested_at__isnull=True).exclude(pk=locked.pk)
    if not others.exists():
        raise InvalidDeploymentError("a deployment needs at least one variant; delete the deployment instead")
    locked.remove_requested_at = timezone.now()
    locked.remove_requested_by = actor if isinstance(actor, User) else None
    locked.save(update_fields=["remove_requested_at", "remove_requested_by", "updated_at"])
    record_deployment_event(
        actor=actor,
        action="variant.remove_requested",
        deployment=locked.deployment,
        before=describe_variant(locked),
    )
    enqueue_reconcile(locked.deployment)
    transaction.on_commit(publish_routing_table)
    return locked
