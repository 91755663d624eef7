"""Promotion: a candidate's version becomes the stable variant's, as one audited change.

Every deployment has one stable variant (``Variant.role``). Promoting a candidate, at the end of a
rollout or by a person (UI, API and CLI call ``promote_variant``), does in one transaction: the
stable variant takes the candidate's version (pinned, or through the alias it follows, which
moves to that version), the rollout turns ``promoting`` and ``rollout.promoted`` is audited.
The reconcile loop then gives the stable variant replicas of that version while the candidate
keeps its traffic; once every live replica of the stable variant serves it, ``hand_over`` moves
the candidate's weight back to the stable variant in one split change (the candidate to 0, the
shadows off) and the rollout ends ``succeeded``. So no request goes back to the older version.
A person's promotion skips the guarded steps and is recorded as forced, with who and why.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments.errors import RolloutStateError, VariantNotFoundError
from deployments.inputs import RolloutPolicy, Share, Split
from deployments.models import (
    ACTIVE_ROLLOUT_STATES,
    LIVE_WORKER_STATES,
    Deployment,
    Rollout,
    TrafficChange,
    Variant,
    VariantRole,
    WorkerState,
)
from deployments.services.deployments import describe_variant
from deployments.services.events import enqueue_reconcile, record_deployment_event
from deployments.services.traffic import current_split, ensure_ready_replica, set_traffic_split
from registry.audit import Actor, actor_label


def stable_variant(deployment: Deployment) -> Variant:
    """The deployment's stable variant (409 when it has none, which only old data can have)."""
    found = (
        deployment.variants.select_related("version")
        .filter(role=VariantRole.STABLE, remove_requested_at__isnull=True)
        .first()
    )
    if found is None:
        raise RolloutStateError(f"deployment {deployment.name!r} has no stable variant")
    return found


def describe(rollout: Rollout) -> dict[str, Any]:
    """A rollout as recorded in audit events."""
    return {
        "id": rollout.pk,
        "candidate": rollout.candidate.name,
        "baseline": rollout.baseline.name,
        "version": rollout.version.version if rollout.version else None,
        "trigger": rollout.trigger,
        "forced": rollout.forced,
        "steps": rollout.steps,
        "hold_s": rollout.hold_s,
        "max_error_rate": rollout.max_error_rate,
        "max_p99_ms": rollout.max_p99_ms,
        "min_shadow_agreement": rollout.min_shadow_agreement,
        "min_requests": rollout.min_requests,
        "state": rollout.state,
        "step": rollout.step_index,
    }


def promote_variant(*, deployment: Deployment, variant_name: str, actor: Actor, reason: str = "") -> Rollout:
    """A person promotes ``variant_name`` now, past any guard: a forced promotion, recorded as such."""
    candidate = deployment.variants.select_related("version").filter(name=variant_name).first()
    if candidate is None or candidate.remove_requested_at is not None:
        raise VariantNotFoundError(f"deployment {deployment.name!r} has no variant {variant_name!r}")
    stable = stable_variant(deployment)
    if candidate.pk == stable.pk:
        raise RolloutStateError(f"variant {variant_name!r} is the stable variant already")
    active = deployment.rollouts.filter(state__in=ACTIVE_ROLLOUT_STATES).first()
    if active is not None:
        raise RolloutStateError(
            f"rollout #{active.pk} is {active.state}; abort it before promoting by hand",
            extra={"rollout": active.pk},
        )
    ensure_ready_replica(candidate, "be promoted")
    defaults = RolloutPolicy(candidate=candidate.name)
    why = f"promoted by {actor_label(actor)} without guarded steps (forced)" + (
        f": {reason}" if reason else ""
    )
    try:
        with transaction.atomic():
            rollout = Rollout.objects.create(
                deployment=deployment,
                candidate=candidate,
                baseline=stable,
                version=candidate.version,
                trigger=Rollout.Trigger.PROMOTE,
                forced=True,
                steps=[100],
                step_index=0,
                hold_s=defaults.hold_s,
                max_error_rate=defaults.max_error_rate,
                max_p99_ms=defaults.max_p99_ms,
                state=Rollout.State.PROMOTING,
                step_started_at=timezone.now(),
                created_by=actor if isinstance(actor, User) else None,
            )
            begin_promotion(rollout=rollout, actor=actor, reason=why[:4000])
    except IntegrityError:
        raise RolloutStateError(f"deployment {deployment.name!r} has a rollout in progress") from None
    return rollout


@transaction.atomic
def begin_promotion(*, rollout: Rollout, actor: Actor, reason: str) -> None:
    """The stable variant takes the candidate's version and the alias it follows moves; one event."""
    from registry.services import set_alias

    deployment = rollout.deployment
    stable = (
        Variant.objects.select_for_update().select_related("version").get(pk=stable_variant(deployment).pk)
    )
    candidate = Variant.objects.select_related("version").get(pk=rollout.candidate_id)
    version = candidate.version
    before = describe_variant(stable)
    if stable.version_id != version.pk:
        stable.version = version
        if not stable.alias:
            stable.pinned_version = version
        stable.follow_note = ""
        stable.save(update_fields=["version", "pinned_version", "follow_note", "updated_at"])
    if stable.alias:
        set_alias(model=deployment.model, name=stable.alias, version_number=version.version, actor=actor)
    rollout.state = Rollout.State.PROMOTING
    rollout.reason = reason
    rollout.save()
    record_deployment_event(
        actor=actor,
        action="rollout.promoted",
        deployment=deployment,
        before=before,
        after={**describe_variant(stable), "from_variant": candidate.name, "rollout": describe(rollout)},
        reason=reason,
    )
    enqueue_reconcile(deployment)
    hand_over(rollout)


def hand_over(rollout: Rollout) -> bool:
    """Move the candidate's traffic to the stable variant once all its replicas serve the version."""
    stable = stable_variant(rollout.deployment)
    live = stable.workers.filter(state__in=LIVE_WORKER_STATES)
    serving = live.filter(state=WorkerState.READY, version_id=stable.version_id).exists()
    older = live.exclude(version_id=stable.version_id).exists()
    if (not serving and stable.replicas) or older:
        rollout.last_evaluation = {
            **(rollout.last_evaluation or {}),
            "at": timezone.now().isoformat(),
            "note": f"promoted: waiting for the replicas of {stable.name} to serve v{stable.version.version}",
        }
        rollout.save(update_fields=["last_evaluation", "updated_at"])
        return False
    candidate = rollout.candidate
    split = current_split(rollout.deployment)
    moved = sum(split[name].weight for name in (stable.name, candidate.name) if name in split)
    shares = {
        name: Share(weight=share.weight, shadow_percent=share.shadow_percent) for name, share in split.items()
    }
    shares[stable.name] = Share(weight=moved)
    shares[candidate.name] = Share(weight=0)
    set_traffic_split(
        deployment=rollout.deployment,
        split=Split(shares),
        actor=None,
        reason=f"promotion of v{stable.version.version}: {candidate.name}'s traffic back to {stable.name}",
        kind=TrafficChange.Kind.PROMOTE,
        check_ready=False,
    )
    rollout.state = Rollout.State.SUCCEEDED
    rollout.finished_at = timezone.now()
    rollout.save()
    record_deployment_event(
        actor=None,
        action="rollout.succeeded",
        deployment=rollout.deployment,
        after=describe(rollout),
        reason=rollout.reason,
    )
    return True
