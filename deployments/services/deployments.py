"""Creating, stopping, starting and deleting deployments."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from config.locks import advisory_lock
from deployments.backends import BackendError, get_backend
from deployments.errors import DeploymentBusyError, DuplicateDeploymentError, InvalidDeploymentError
from deployments.models import Deployment, DeploymentStatus, Variant, WorkerState
from deployments.services.batching import below, propose_batching, validate_batching
from deployments.services.events import enqueue_reconcile, record_deployment_event
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
        raise DuplicateDeploymentError(f"a deployment named {name!r} exists already") from None
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


@contextmanager
def reconcile_paused(deployment: Deployment) -> Iterator[None]:
    """Hold the deployment's reconcile lock, so no pass starts a worker while its rows go away."""
    wait_s = 2 * settings.KILN_DRAIN_GRACE_S + 30  # a running pass may be draining workers
    with advisory_lock(f"deployments.reconcile.{deployment.pk}", wait_s=wait_s) as taken:
        if not taken:
            raise DeploymentBusyError(
                f"deployment {deployment.name!r} is busy (its workers are being changed); try again shortly"
            )
        yield


def delete_deployment(*, deployment: Deployment, actor: Actor, allow_queue: bool = True) -> bool:
    """Stop every worker now, then delete the deployment and its history of workers and reports.

    Returns False when this process cannot reach the workers' backend (the web app of the compose
    stack has no Docker socket): the deployment stops routing at once and a Celery worker, which
    can, finishes the deletion.
    """
    from deployments.reconcile import stop_all_workers

    try:
        with reconcile_paused(deployment):
            stop_all_workers(deployment)
            with transaction.atomic():
                record_deployment_event(
                    actor=actor,
                    action="deployment.deleted",
                    deployment=deployment,
                    before={"variants": [describe_variant(v) for v in deployment.variants.all()]},
                )
                deployment.delete()
    except BackendError as exc:
        if not allow_queue:
            raise
        _queue_deletion(deployment, actor, exc.message)
        return False
    from deployments.services.routing import publish_routing_table

    transaction.on_commit(publish_routing_table)
    return True


@transaction.atomic
def _queue_deletion(deployment: Deployment, actor: Actor, reason: str) -> None:
    from deployments.tasks import delete_deployment_task

    Deployment.objects.filter(pk=deployment.pk).update(
        desired_running=False,
        status=DeploymentStatus.STOPPING,
        status_reason="being deleted: workers are stopping",
    )
    record_deployment_event(
        actor=actor,
        action="deployment.delete_requested",
        deployment=deployment,
        reason=f"handed over: {reason}",
    )
    deployment_id, actor_id = deployment.pk, actor.pk if isinstance(actor, User) else None
    transaction.on_commit(lambda: delete_deployment_task.delay(deployment_id, actor_id))
    from deployments.services.routing import publish_routing_table

    transaction.on_commit(publish_routing_table)


def add_variant(*, deployment: Deployment, raw: dict[str, Any], actor: Actor) -> Variant:
    """Add an arm to a deployment at weight 0 (traffic moves through a split change)."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("model").get(pk=deployment.pk)
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


def remove_variant(*, variant: Variant, actor: Actor) -> None:
    """Remove an arm that carries no traffic; its workers drain and stop."""
    from deployments.reconcile import stop_all_workers_of_variant

    if variant.weight:
        raise InvalidDeploymentError(
            f"variant {variant.name!r} still has weight {variant.weight}; move its traffic first"
        )
    if variant.deployment.variants.count() == 1:
        raise InvalidDeploymentError("a deployment needs at least one variant; delete the deployment instead")
    with reconcile_paused(variant.deployment):
        stop_all_workers_of_variant(variant)
        with transaction.atomic():
            record_deployment_event(
                actor=actor,
                action="variant.removed",
                deployment=variant.deployment,
                before=describe_variant(variant),
            )
            variant.delete()
    from deployments.services.routing import publish_routing_table

    transaction.on_commit(publish_routing_table)
