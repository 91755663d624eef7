"""Changing a variant: replicas, version (a rolling update), batching (aliases: ``alias_moves``)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from deployments.errors import InvalidDeploymentError
from deployments.inputs import VersionTarget
from deployments.models import Variant
from deployments.services.batching import validate_batching
from deployments.services.deployments import describe_variant, resolve_target
from deployments.services.events import enqueue_reconcile, record_deployment_event
from inference_worker.contracts.batching import encode_batching
from registry.audit import Actor

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
