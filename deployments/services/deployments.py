"""Creating, stopping, starting and deleting deployments."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments.backends import BackendError, get_backend
from deployments.errors import DuplicateDeploymentError, InvalidDeploymentError
from deployments.models import Deployment, DeploymentStatus, Variant, WorkerState
from deployments.services.batching import below, propose_batching, validate_batching
from deployments.services.events import enqueue_reconcile, record_deployment_event
from deployments.services.routing import publish_routing_table
from inference_worker.contracts.batching import MAX_BATCH_SIZE, PREFERRED_BATCH_SIZES, encode_batching
from registry.audit import Actor
from registry.models import Alias, ModelVersion, RegisteredModel, VersionStatus, slug_validator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantTarget:
    """The version a variant serves and, when it follows one, the alias."""

    version: ModelVersion
    pinned: ModelVersion | None
    alias: str


def _slug(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidDeploymentError(f"{field}: must be a string")
    try:
        slug_validator(value)
    except ValidationError:
        raise InvalidDeploymentError(
            f"{field}: {value!r} is not valid; use 1-64 lowercase letters, digits and hyphens"
        ) from None
    return value


def resolve_target(model: RegisteredModel, raw: dict[str, Any], prefix: str) -> VariantTarget:
    """A variant's version: ``version`` (pinned number) or ``alias`` (followed), exactly one."""
    has_version, has_alias = raw.get("version") not in (None, ""), bool(raw.get("alias"))
    if has_version == has_alias:
        raise InvalidDeploymentError(f"{prefix}version: give either a version number or an alias to follow")
    if has_alias:
        alias_name = _slug(raw["alias"], f"{prefix}alias")
        alias = Alias.objects.select_related("version").filter(model=model, name=alias_name).first()
        if alias is None:
            raise InvalidDeploymentError(f"{prefix}alias: model {model.name!r} has no alias {alias_name!r}")
        version, pinned = alias.version, None
    else:
        number = raw["version"]
        if isinstance(number, bool) or not isinstance(number, int):
            raise InvalidDeploymentError(f"{prefix}version: must be a version number")
        found = ModelVersion.objects.filter(model=model, version=number).first()
        if found is None:
            raise InvalidDeploymentError(f"{prefix}version: model {model.name!r} has no version {number}")
        version, pinned, alias_name = found, found, ""
    if version.status != VersionStatus.READY:
        raise InvalidDeploymentError(
            f"{prefix}version: {version} is {version.status}, not ready; "
            "only converted versions can be deployed"
        )
    return VariantTarget(version=version, pinned=pinned, alias=alias_name)


def _gpu_ids(raw: Any, prefix: str) -> list[int]:
    device = raw.get("device", "cpu")
    if device in (None, "", "cpu"):
        return []
    if isinstance(device, str) and device.startswith("cuda:"):
        device = device[5:].split(",")
    if isinstance(device, str):
        device = device.split(",")
    try:
        ids = sorted({int(str(d).strip()) for d in device})
    except (TypeError, ValueError):
        raise InvalidDeploymentError(
            f"{prefix}device: use 'cpu', 'cuda:0' or a list of GPU ids such as [0, 1]"
        ) from None
    if any(i < 0 or i > 63 for i in ids):
        raise InvalidDeploymentError(f"{prefix}device: GPU ids must be between 0 and 63")
    return ids


def build_variant(
    deployment: Deployment, raw: dict[str, Any], index: int, *, latency_budget_ms: float | None = None
) -> Variant:
    """Validate one variant's input and return an unsaved Variant; errors name ``variants[i].field``."""
    prefix = f"variants[{index}]."
    if not isinstance(raw, dict):
        raise InvalidDeploymentError(f"variants[{index}]: must be an object")
    name = _slug(raw.get("name", "primary" if index == 0 else f"v{index}"), f"{prefix}name")
    target = resolve_target(deployment.model, raw, prefix)
    replicas = raw.get("replicas", 1)
    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, int)
        or not 0 <= replicas <= settings.KILN_MAX_REPLICAS
    ):
        raise InvalidDeploymentError(
            f"{prefix}replicas: must be an integer from 0 to {settings.KILN_MAX_REPLICAS}"
        )
    weight = raw.get("weight", 100 if index == 0 else 0)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise InvalidDeploymentError(f"{prefix}weight: must be an integer from 0 to 100")
    backend_name = raw.get("backend") or settings.KILN_DEFAULT_BACKEND
    gpu_ids = _gpu_ids(raw, prefix)
    try:
        get_backend(str(backend_name)).check_spec(gpu_ids=tuple(gpu_ids))
    except BackendError as exc:
        field = "device" if exc.code == "no_gpu" else "backend"
        raise InvalidDeploymentError(f"{prefix}{field}: {exc.message}") from None
    dynamic = bool((target.version.report or {}).get("dynamic_batch", True))
    budget = latency_budget_ms or settings.KILN_LATENCY_BUDGET_MS
    proposal = propose_batching(target.version.report or {}, latency_budget_ms=budget)
    given = dict(raw.get("batching") or {})
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
        replicas=replicas,
        gpu_ids=gpu_ids,
        backend=str(backend_name),
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
    variants: list[dict[str, Any]],
    actor: User,
    description: str = "",
    latency_budget_ms: float | None = None,
) -> Deployment:
    """Create a deployment and its variants; the reconcile loop starts the replicas."""
    _slug(name, "name")
    if not isinstance(variants, list) or not variants:
        raise InvalidDeploymentError("variants: at least one variant is required")
    if len(variants) > 8:
        raise InvalidDeploymentError("variants: at most 8 variants")
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                name=name, model=model, description=description[:5000], created_by=actor
            )
            built = [
                build_variant(deployment, raw, i, latency_budget_ms=latency_budget_ms)
                for i, raw in enumerate(variants)
            ]
            names = [v.name for v in built]
            if len(set(names)) != len(names):
                raise InvalidDeploymentError("variants: variant names must be unique")
            check_weights(built)
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
        "version": variant.version.version,
        "alias": variant.alias or None,
        "weight": variant.weight,
        "replicas": variant.replicas,
        "device": variant.device,
        "backend": variant.backend,
    }


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


def add_variant(*, deployment: Deployment, raw: dict[str, Any], actor: Actor) -> Variant:
    """Add an arm to a deployment at weight 0 (traffic moves through a split change)."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("model").get(pk=deployment.pk)
        locked.ensure_changeable()
        existing = list(locked.variants.all())
        if len(existing) >= 8:
            raise InvalidDeploymentError("variants: at most 8 variants")
        raw = {**raw, "weight": raw.get("weight", 0)}
        if raw["weight"] != 0:
            raise InvalidDeploymentError(
                "weight: a new variant starts at weight 0; change the traffic split next"
            )
        variant = build_variant(locked, raw, len(existing))
        if any(v.name == variant.name for v in existing):
            raise InvalidDeploymentError(f"name: variant {variant.name!r} exists already")
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
