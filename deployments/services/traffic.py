"""Traffic splits between a deployment's variants: set, restore, shadow.

A split names every variant. The weights of the live (non-shadow) variants add up
to 100; a shadow variant carries weight 0 and a copy percentage. A variant without
a ready replica cannot be given weight (409, the same answer a rollout and a promotion
give). Every change is a ``TrafficChange`` row and an audit event, applied in one
transaction and published as one routing table. Promotion is ``services.promotion``.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from config.errors import ConflictError, NotFoundError
from deployments.errors import InvalidDeploymentError, NotReadyError
from deployments.inputs import Share, Split
from deployments.models import Deployment, TrafficChange, Variant, WorkerState
from deployments.services.events import record_deployment_event
from registry.audit import Actor, actor_label


def ensure_ready_replica(variant: Variant, what: str) -> None:
    """409 unless ``variant`` has a ready replica; ``what`` says what it was about to do."""
    if not variant.workers.filter(state=WorkerState.READY).exists():
        raise NotReadyError(
            f"variant {variant.name!r} has no ready replica, so it cannot {what} yet",
            extra={"variant": variant.name},
        )


def current_split(deployment: Deployment) -> Split:
    """Every variant (not being removed) with its weight and shadow percentage as stored now."""
    return Split(
        {
            v.name: Share(weight=v.weight, shadow_percent=v.shadow_percent)
            for v in deployment.variants.filter(remove_requested_at__isnull=True).order_by("id")
        }
    )


def _check_names(split: Split, variants: dict[str, Variant]) -> None:
    unknown = sorted(set(split) - set(variants))
    if unknown:
        raise InvalidDeploymentError(f"split: unknown variant(s) {', '.join(unknown)}")
    missing = sorted(set(variants) - set(split))
    if missing:
        raise InvalidDeploymentError(
            f"split: missing variant(s) {', '.join(missing)}; a split names every variant (0 for none)"
        )


def _check_split(split: Split, variants: dict[str, Variant], previous: Split) -> None:
    total = split.total_weight
    if total != 100:
        detail = ", ".join(f"{k}={v.weight}" for k, v in split.items())
        raise InvalidDeploymentError(f"split: live weights must add up to 100, got {total} ({detail})")
    for name, share in split.items():
        before = previous.get(name)
        needs_replica = share.weight > (before.weight if before else 0) or share.shadow_percent
        if needs_replica and not _wakes_on_demand(variants[name], share.shadow_percent):
            ensure_ready_replica(variants[name], "take traffic")


def _wakes_on_demand(variant: Variant, shadow_percent: int) -> bool:
    """Live traffic for a variant at zero, which the gateway's activator wakes: no replica needed yet."""
    policy = getattr(variant, "autoscaling", None)
    return not shadow_percent and policy is not None and policy.min_replicas == 0


@transaction.atomic
def set_traffic_split(
    *,
    deployment: Deployment,
    split: Split,
    actor: Actor,
    reason: str = "",
    kind: str = TrafficChange.Kind.MANUAL,
    check_ready: bool = True,
) -> TrafficChange | None:
    """Apply a whole split atomically; returns the history row (None when nothing changed)."""
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    variants = {
        v.name: v
        for v in Variant.objects.select_for_update()
        .filter(deployment=locked, remove_requested_at__isnull=True)
        .order_by("id")
    }
    before = current_split(locked)
    _check_names(split, variants)
    if check_ready:
        _check_split(split, variants, before)
    elif split.total_weight != 100:
        raise InvalidDeploymentError("split: live weights must add up to 100")
    if split == before:
        return None
    for name, share in split.items():
        Variant.objects.filter(pk=variants[name].pk).update(**share.as_dict())
    change = TrafficChange.objects.create(
        deployment=locked,
        kind=kind,
        actor=actor if isinstance(actor, User) else None,
        actor_label=actor_label(actor),
        before=before.as_dict(),
        after=split.as_dict(),
        reason=reason[:4000],
    )
    record_deployment_event(
        actor=actor,
        action=f"traffic.{kind}",
        deployment=locked,
        before=before.as_dict(),
        after=split.as_dict(),
        reason=reason,
    )
    _publish_after_commit()
    return change


def _publish_after_commit() -> None:
    from deployments.services.routing import publish_routing_table

    transaction.on_commit(publish_routing_table)


def restore_split(*, deployment: Deployment, change_id: int, actor: Actor) -> TrafficChange | None:
    """Restore the split an earlier change set (variants added since get weight 0)."""
    change = TrafficChange.objects.filter(deployment=deployment, pk=change_id).first()
    if change is None:
        raise NotFoundError(f"deployment {deployment.name!r} has no traffic change {change_id}")
    names = set(deployment.variants.filter(remove_requested_at__isnull=True).values_list("name", flat=True))
    gone = sorted(set(change.after) - names)
    if gone:
        raise InvalidDeploymentError(f"cannot restore: variant(s) {', '.join(gone)} no longer exist")
    split = Split.parse({name: change.after.get(name, {"weight": 0, "shadow_percent": 0}) for name in names})
    return set_traffic_split(
        deployment=deployment,
        split=split,
        actor=actor,
        reason=f"restored the split of change #{change.pk} ({change.created_at:%Y-%m-%d %H:%M:%S})",
        kind=TrafficChange.Kind.RESTORE,
    )


def set_shadow(*, variant: Variant, percent: int, actor: Actor) -> TrafficChange | None:
    """Make a weight-0 variant a shadow receiving ``percent`` % copies of live requests (0 stops it)."""
    deployment = variant.deployment
    split = current_split(deployment)
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise InvalidDeploymentError("shadow_percent: must be an integer from 0 to 100")
    weight = split[variant.name].weight
    if weight and percent:
        raise ConflictError(
            f"variant {variant.name!r} carries {weight}% of live traffic; "
            "move it to 0 before making it a shadow"
        )
    changed = Split({**split, variant.name: Share(weight=weight, shadow_percent=percent)})
    return set_traffic_split(deployment=deployment, split=changed, actor=actor, reason=f"shadow {percent}%")
