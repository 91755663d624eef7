"""Changing a variant: replicas, version (a rolling update), batching; following aliases."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from deployments.errors import InvalidDeploymentError
from deployments.inputs import VersionTarget
from deployments.models import Deployment, Variant
from deployments.services.batching import validate_batching
from deployments.services.deployments import describe_variant, resolve_target
from deployments.services.events import enqueue_reconcile, record_deployment_event
from inference_worker.contracts.batching import encode_batching
from registry.audit import Actor
from registry.models import Alias, VersionStatus

logger = logging.getLogger(__name__)


def _locked(variant: Variant) -> Variant:
    return (
        Variant.objects.select_for_update().select_related("deployment__model", "version").get(pk=variant.pk)
    )


@transaction.atomic
def scale_variant(*, variant: Variant, replicas: int, actor: Actor) -> Variant:
    """Set the number of replicas; the reconcile loop starts or drains workers."""
    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, int)
        or not 0 <= replicas <= settings.KILN_MAX_REPLICAS
    ):
        raise InvalidDeploymentError(f"replicas: must be an integer from 0 to {settings.KILN_MAX_REPLICAS}")
    locked = _locked(variant)
    if locked.replicas == replicas:
        return locked
    before = locked.replicas
    locked.replicas = replicas
    locked.save(update_fields=["replicas", "updated_at"])
    record_deployment_event(
        actor=actor,
        action="variant.scaled",
        deployment=locked.deployment,
        before={"variant": locked.name, "replicas": before},
        after={"variant": locked.name, "replicas": replicas},
    )
    enqueue_reconcile(locked.deployment)
    return locked


@transaction.atomic
def set_variant_version(
    *, variant: Variant, target: VersionTarget, actor: Actor, reason: str = ""
) -> Variant:
    """Pin a version or follow an alias: a rolling update."""
    locked = _locked(variant)
    resolved = resolve_target(locked.deployment.model, target)
    before = describe_variant(locked)
    locked.version = resolved.version
    locked.pinned_version = resolved.pinned
    locked.alias = resolved.alias
    locked.save(update_fields=["version", "pinned_version", "alias", "updated_at"])
    record_deployment_event(
        actor=actor,
        action="variant.version_changed",
        deployment=locked.deployment,
        before=before,
        after=describe_variant(locked),
        reason=reason,
    )
    enqueue_reconcile(locked.deployment)
    return locked


@transaction.atomic
def update_batching(*, variant: Variant, batching: dict[str, Any], actor: Actor) -> Variant:
    """Change batching options; workers are replaced one by one with the new options."""
    locked = _locked(variant)
    current = locked.batching
    dynamic = bool((locked.version.report or {}).get("dynamic_batch", True))
    new = validate_batching(batching, base=current, prefix="batching.", fixed_batch=not dynamic)
    if new == current:
        return locked
    for field, value in encode_batching(new).items():
        setattr(locked, field, value)
    locked.batching_note = f"Set by the user ({', '.join(sorted(batching))})."
    locked.save()
    record_deployment_event(
        actor=actor,
        action="variant.batching_changed",
        deployment=locked.deployment,
        before={"variant": locked.name, **encode_batching(current)},
        after={"variant": locked.name, **encode_batching(new)},
    )
    enqueue_reconcile(locked.deployment)
    return locked


def roll_alias_followers(*, alias: Alias) -> list[Variant]:
    """Move every variant that follows ``alias`` to its new version, when that version is ready."""
    moved = []
    followers = Variant.objects.select_related("deployment", "version").filter(
        deployment__model_id=alias.model_id, alias=alias.name
    )
    for variant in followers:
        if variant.version_id == alias.version_id:
            continue
        if alias.version.status != VersionStatus.READY:
            logger.info("%s follows %s, whose version is not ready yet", variant, alias)
            continue
        with transaction.atomic():
            locked = _locked(variant)
            before = describe_variant(locked)
            locked.version = alias.version
            locked.save(update_fields=["version", "updated_at"])
            record_deployment_event(
                actor=None,
                action="variant.version_changed",
                deployment=locked.deployment,
                before=before,
                after=describe_variant(locked),
                reason=f"alias {alias.name} moved to v{alias.version.version}",
            )
            enqueue_reconcile(locked.deployment)
        moved.append(variant)
    return moved


def on_alias_moved(*, alias_id: int) -> None:
    """Called by the registry after an alias move commits."""
    alias = Alias.objects.select_related("version", "model").filter(pk=alias_id).first()
    if alias is not None:
        roll_alias_followers(alias=alias)


def followers_pending(deployment: Deployment) -> list[Variant]:
    """Variants whose alias points at a ready version other than the one they serve."""
    pending = []
    for variant in deployment.variants.exclude(alias="").select_related("version"):
        alias = (
            Alias.objects.select_related("version")
            .filter(model_id=deployment.model_id, name=variant.alias)
            .first()
        )
        if alias and alias.version_id != variant.version_id and alias.version.status == VersionStatus.READY:
            pending.append(variant)
    return pending
