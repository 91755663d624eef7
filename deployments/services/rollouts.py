"""Guarded rollouts: step a candidate's weight up while it meets every objective; roll back when not.

A rollout starts ``waiting_for_replicas`` and beat (``advance_rollouts``, every few seconds, each
row locked while judged) applies its first step once the candidate has a ready replica, or ends it
``timed_out`` after ``replica_timeout_s``. At each step every objective is measured
(``services.objectives``); a breach over enough samples rolls back, and the step advances only when
the hold has passed and every objective has ``min_requests`` samples. After the last step the
candidate is promoted (``services.promotion``): the rollout is ``succeeded`` once the stable variant
serves the candidate's version and has the traffic back. A rollout never succeeds with an objective
unmeasured.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments.errors import InvalidDeploymentError, RolloutStateError, VariantNotFoundError
from deployments.inputs import RolloutPolicy, Share, Split
from deployments.models import ACTIVE_ROLLOUT_STATES, Deployment, Rollout, TrafficChange, WorkerState
from deployments.services.events import record_deployment_event
from deployments.services.objectives import (
    Objective,
    evaluate,
    shadow_counters,
    summary,
    unmeasured,
)
from deployments.services.objectives import (
    breach as find_breach,
)
from deployments.services.promotion import begin_promotion, describe, hand_over, stable_variant
from deployments.services.traffic import current_split, set_traffic_split
from registry.audit import Actor

logger = logging.getLogger(__name__)


def start_rollout(
    *,
    deployment: Deployment,
    policy: RolloutPolicy,
    actor: Actor,
    trigger: str = Rollout.Trigger.USER,
) -> Rollout:
    """Plan a rollout; it waits for a ready candidate replica, then beat applies its first step."""
    variants = {v.name: v for v in deployment.variants.filter(remove_requested_at__isnull=True)}
    candidate, baseline = policy.candidate, policy.baseline
    if candidate not in variants:
        raise VariantNotFoundError(f"deployment {deployment.name!r} has no variant {candidate!r}")
    if variants[candidate].is_stable:
        raise InvalidDeploymentError(
            f"candidate: {candidate!r} is the stable variant; roll out another variant to promote it"
        )
    if baseline is None:
        baseline = stable_variant(deployment).name
    if baseline not in variants:
        raise VariantNotFoundError(f"deployment {deployment.name!r} has no variant {baseline!r}")
    if baseline == candidate:
        raise InvalidDeploymentError("baseline: the candidate cannot be its own baseline")
    split = current_split(deployment)
    others = sum(v.weight for n, v in split.items() if n not in (candidate, baseline))
    if policy.steps[-1] + others > 100 and others:
        raise InvalidDeploymentError(
            f"steps: other variants hold {others}% of traffic; move it to {baseline!r} or {candidate!r} first"
        )
    active = deployment.rollouts.filter(state__in=ACTIVE_ROLLOUT_STATES).first()
    if active is not None:
        raise RolloutStateError(
            f"deployment {deployment.name!r} has a rollout in progress already "
            f"(#{active.pk}, {active.state})",
            extra={"rollout": active.pk},
        )
    try:
        with transaction.atomic():
            rollout = Rollout.objects.create(
                deployment=deployment,
                candidate=variants[candidate],
                baseline=variants[baseline],
                version=variants[candidate].version,
                trigger=trigger,
                steps=list(policy.steps),
                hold_s=float(policy.hold_s),
                max_error_rate=float(policy.max_error_rate),
                max_p99_ms=float(policy.max_p99_ms),
                min_shadow_agreement=policy.min_shadow_agreement,
                min_requests=policy.min_requests,
                replica_timeout_s=float(policy.replica_timeout_s),
                state=Rollout.State.WAITING,
                created_by=actor if isinstance(actor, User) else None,
            )
            record_deployment_event(
                actor=actor, action="rollout.started", deployment=deployment, after=describe(rollout)
            )
    except IntegrityError:
        raise RolloutStateError(f"deployment {deployment.name!r} has a rollout in progress already") from None
    return rollout


def _weights_for(rollout: Rollout, percent: int, *, mirror: bool) -> Split:
    """The split at ``percent`` for the candidate; ``mirror``: both arms copy each other's requests."""
    split = current_split(rollout.deployment)
    names = (rollout.candidate.name, rollout.baseline.name)
    others = sum(v.weight for n, v in split.items() if n not in names)
    shadow = 100 if mirror else 0
    return Split(
        {
            **split,
            rollout.candidate.name: Share(weight=percent, shadow_percent=shadow),
            rollout.baseline.name: Share(weight=max(100 - percent - others, 0), shadow_percent=shadow),
        }
    )


def advance_rollouts() -> dict[str, int]:
    """Judge every rollout in progress once (beat)."""
    counts = {"advanced": 0, "rolled_back": 0, "succeeded": 0, "waiting": 0, "promoting": 0, "timed_out": 0}
    states = (Rollout.State.WAITING, Rollout.State.RUNNING, Rollout.State.PROMOTING)
    for rollout_id in Rollout.objects.filter(state__in=states).values_list("pk", flat=True):
        outcome = _advance_one(rollout_id)
        if outcome in counts:
            counts[outcome] += 1
    return counts


@transaction.atomic
def _advance_one(rollout_id: int) -> str:
    rollout = (
        Rollout.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("deployment__model", "candidate__version", "baseline", "version")
        .filter(pk=rollout_id)
        .first()
    )
    if rollout is None:
        return "skipped"
    now = timezone.now()
    if rollout.state == Rollout.State.PROMOTING:
        return "succeeded" if hand_over(rollout) else "promoting"
    if rollout.state == Rollout.State.WAITING:
        return _start_when_ready(rollout, now)
    if rollout.state != Rollout.State.RUNNING:
        return "skipped"
    measured = evaluate(rollout)
    rollout.last_evaluation = {
        "at": now.isoformat(),
        "step": rollout.step_index,
        "weight": rollout.current_weight,
        "objectives": {o.name: o.as_dict() for o in measured},
    }
    breach = find_breach(rollout, measured)
    if breach:
        _roll_back(rollout, now, breach, measured)
        return "rolled_back"
    started = rollout.step_started_at or now
    held = (now - started) >= timedelta(seconds=rollout.hold_s)
    missing = unmeasured(rollout, measured)
    if not held or missing:
        if missing:
            rollout.last_evaluation["note"] = "waiting for samples: " + ", ".join(missing)
        rollout.save(update_fields=["last_evaluation", "updated_at"])
        return "waiting"
    rollout.history = [*rollout.history, rollout.last_evaluation]
    if rollout.step_index + 1 >= len(rollout.steps):
        begin_promotion(
            rollout=rollout,
            actor=None,
            reason=f"met every objective at every step (last: {summary(measured)})",
        )
        return "succeeded" if rollout.state == Rollout.State.SUCCEEDED else "promoting"
    rollout.step_index += 1
    _apply_step(
        rollout,
        now,
        reason=f"rollout step {rollout.step_index + 1}: {rollout.current_weight}% after {summary(measured)}",
    )
    return "advanced"


def _start_when_ready(rollout: Rollout, now: Any) -> str:
    if rollout.candidate.workers.filter(
        state=WorkerState.READY, version_id=rollout.candidate.version_id
    ).exists():
        rollout.state = Rollout.State.RUNNING
        _apply_step(rollout, now, reason=f"rollout step 1: {rollout.current_weight}%")
        return "advanced"
    waited = (now - rollout.created_at).total_seconds()
    if waited >= rollout.replica_timeout_s:
        rollout.state = Rollout.State.TIMED_OUT
        rollout.finished_at = now
        rollout.reason = (
            f"no ready replica of {rollout.candidate.name} within {rollout.replica_timeout_s:g} s; "
            "no traffic was moved"
        )
        rollout.save()
        record_deployment_event(
            actor=None,
            action="rollout.timed_out",
            deployment=rollout.deployment,
            after=describe(rollout),
            reason=rollout.reason,
        )
        return "timed_out"
    rollout.last_evaluation = {
        "at": now.isoformat(),
        "note": f"waiting for a ready replica of {rollout.candidate.name} "
        f"({waited:.0f} of {rollout.replica_timeout_s:g} s)",
    }
    rollout.save(update_fields=["last_evaluation", "updated_at"])
    return "waiting"


def _apply_step(rollout: Rollout, now: Any, *, reason: str) -> None:
    mirror = rollout.min_shadow_agreement is not None
    set_traffic_split(
        deployment=rollout.deployment,
        split=_weights_for(rollout, rollout.current_weight, mirror=mirror),
        actor=None,
        reason=reason,
        kind=TrafficChange.Kind.ROLLOUT,
        check_ready=False,
    )
    rollout.step_started_at = now
    rollout.shadow_mark = shadow_counters(rollout) if mirror else {}
    rollout.save()
    record_deployment_event(
        actor=None,
        action="rollout.step_advanced",
        deployment=rollout.deployment,
        after=describe(rollout),
        reason=reason,
    )


def _roll_back(rollout: Rollout, now: Any, breach: str, measured: list[Objective]) -> None:
    reason = f"rolled back at {rollout.current_weight}%: {breach} (measured: {summary(measured)})"
    set_traffic_split(
        deployment=rollout.deployment,
        split=_weights_for(rollout, 0, mirror=False),
        actor=None,
        reason=reason,
        kind=TrafficChange.Kind.ROLLBACK,
        check_ready=False,
    )
    rollout.state = Rollout.State.ROLLED_BACK
    rollout.finished_at = now
    rollout.reason = reason
    rollout.history = [*rollout.history, rollout.last_evaluation]
    rollout.save()
    record_deployment_event(
        actor=None,
        action="rollout.rolled_back",
        deployment=rollout.deployment,
        after=describe(rollout),
        reason=reason,
    )


_TRANSITIONS = {
    "pause": ({Rollout.State.RUNNING, Rollout.State.WAITING}, Rollout.State.PAUSED),
    "resume": ({Rollout.State.PAUSED}, Rollout.State.RUNNING),
    "abort": ({Rollout.State.RUNNING, Rollout.State.PAUSED, Rollout.State.WAITING}, Rollout.State.ABORTED),
}


@transaction.atomic
def control_rollout(*, rollout: Rollout, command: str, actor: Actor) -> Rollout:
    """Pause, resume or abort a rollout. Abort sends the candidate's traffic back to the baseline."""
    locked = (
        Rollout.objects.select_for_update(of=("self",))
        .select_related("deployment", "candidate", "baseline", "version")
        .get(pk=rollout.pk)
    )
    if command not in _TRANSITIONS:
        raise InvalidDeploymentError("command: pause, resume or abort")
    allowed, target = _TRANSITIONS[command]
    if locked.state not in allowed:
        raise RolloutStateError(f"cannot {command} a rollout that is {locked.state}")
    locked.state = target
    if command == "resume":
        if locked.step_started_at is None:
            locked.state = Rollout.State.WAITING  # it never took traffic: wait for a replica again
        else:
            locked.step_started_at = timezone.now()  # a fresh hold after a pause
            locked.shadow_mark = shadow_counters(locked) if locked.min_shadow_agreement else {}
    if command == "abort":
        locked.finished_at = timezone.now()
        locked.reason = "aborted by a user"
        set_traffic_split(
            deployment=locked.deployment,
            split=_weights_for(locked, 0, mirror=False),
            actor=actor,
            reason="rollout aborted",
            kind=TrafficChange.Kind.ROLLBACK,
            check_ready=False,
        )
    locked.save()
    record_deployment_event(
        actor=actor, action=f"rollout.{command}", deployment=locked.deployment, after=describe(locked)
    )
    return locked
