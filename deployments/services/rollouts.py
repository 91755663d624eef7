"""Guarded rollouts: step a candidate's weight up while it meets its objective; roll back when not.

Measurements come from the candidate's own worker reports over the current step
(requests, errors, p99 from merged latency histograms) and, for the optional
agreement objective, from the gateways' shadow comparisons. Beat calls
``advance_rollouts`` every few seconds; each rollout row is locked while judged.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments import histograms
from deployments.errors import InvalidDeploymentError
from deployments.inputs import RolloutPolicy, Share, Split
from deployments.models import Deployment, Report, Rollout, TrafficChange, Variant, WorkerState
from deployments.services.events import record_deployment_event
from deployments.services.gateway_stats import shadow_summary, variant_stats
from deployments.services.traffic import current_split, set_traffic_split
from registry.audit import Actor

logger = logging.getLogger(__name__)
SUCCESS_OUTCOMES = {"success"}


def start_rollout(*, deployment: Deployment, policy: RolloutPolicy, actor: User) -> Rollout:
    """Plan a rollout; its first step applies at the next beat once the candidate has a ready replica."""
    variants = {v.name: v for v in deployment.variants.filter(remove_requested_at__isnull=True)}
    candidate, baseline = policy.candidate, policy.baseline
    if candidate not in variants:
        raise InvalidDeploymentError(
            f"candidate: deployment {deployment.name!r} has no variant {candidate!r}"
        )
    split = current_split(deployment)
    if baseline is None:
        live = sorted((v.weight, n) for n, v in split.items() if n != candidate and v.weight)
        if not live:
            raise InvalidDeploymentError("baseline: no other variant carries traffic to roll from")
        baseline = live[-1][1]
    if baseline not in variants or baseline == candidate:
        raise InvalidDeploymentError(f"baseline: {baseline!r} is not another variant of this deployment")
    others = sum(v.weight for n, v in split.items() if n not in (candidate, baseline))
    if policy.steps[-1] + others > 100 and others:
        raise InvalidDeploymentError(
            f"steps: other variants hold {others}% of traffic; move it to {baseline!r} or {candidate!r} first"
        )
    try:
        with transaction.atomic():
            rollout = Rollout.objects.create(
                deployment=deployment,
                candidate=variants[candidate],
                baseline=variants[baseline],
                steps=list(policy.steps),
                hold_s=float(policy.hold_s),
                max_error_rate=float(policy.max_error_rate),
                max_p99_ms=float(policy.max_p99_ms),
                min_shadow_agreement=policy.min_shadow_agreement,
                min_requests=policy.min_requests,
                created_by=actor,
            )
            record_deployment_event(
                actor=actor,
                action="rollout.started",
                deployment=deployment,
                after=describe(rollout),
            )
    except IntegrityError:
        raise InvalidDeploymentError(
            f"deployment {deployment.name!r} has a rollout in progress already"
        ) from None
    return rollout


def describe(rollout: Rollout) -> dict[str, Any]:
    return {
        "candidate": rollout.candidate.name,
        "baseline": rollout.baseline.name,
        "steps": rollout.steps,
        "hold_s": rollout.hold_s,
        "max_error_rate": rollout.max_error_rate,
        "max_p99_ms": rollout.max_p99_ms,
        "min_shadow_agreement": rollout.min_shadow_agreement,
        "state": rollout.state,
        "step": rollout.step_index,
    }


def measure(variant: Variant, *, since: Any) -> dict[str, Any]:
    """The candidate's figures since ``since``: requests, error rate, p99 (ms)."""
    reports = list(Report.objects.filter(variant=variant, resolution=Report.Resolution.RAW, end__gt=since))
    requests = sum(r.requests for r in reports)
    failed = sum(v for r in reports for k, v in r.outcomes.items() if k not in SUCCESS_OUTCOMES)
    merged = histograms.merge(r.latency_histogram for r in reports)
    if merged:
        p99 = histograms.quantile(merged, 0.99)
    else:
        values = [r.latency_p99_ms for r in reports if r.latency_p99_ms is not None and r.requests]
        p99 = max(values) if values else None
    return {
        "requests": requests,
        "errors": failed,
        "error_rate": (failed / requests) if requests else None,
        "p99_ms": p99,
        "reports": len(reports),
    }


def _breach(rollout: Rollout, figures: dict[str, Any]) -> str | None:
    if figures["requests"] < rollout.min_requests:
        return None
    if figures["error_rate"] is not None and figures["error_rate"] > rollout.max_error_rate:
        return (
            f"error rate {figures['error_rate']:.1%} ({figures['errors']} of {figures['requests']} requests) "
            f"is above the objective of {rollout.max_error_rate:.1%}"
        )
    if figures["p99_ms"] is not None and figures["p99_ms"] > rollout.max_p99_ms:
        return f"p99 latency {figures['p99_ms']:.1f} ms is above the objective of {rollout.max_p99_ms:g} ms"
    agreement = figures.get("shadow_agreement")
    if (
        rollout.min_shadow_agreement is not None
        and agreement is not None
        and agreement < rollout.min_shadow_agreement
    ):
        return (
            f"shadow agreement {agreement:.1%} is below the objective of {rollout.min_shadow_agreement:.1%}"
        )
    return None


def _weights_for(rollout: Rollout, percent: int) -> Split:
    split = current_split(rollout.deployment)
    others = sum(
        v.weight for n, v in split.items() if n not in (rollout.candidate.name, rollout.baseline.name)
    )
    return Split(
        {
            **split,
            rollout.candidate.name: Share(weight=percent),
            rollout.baseline.name: Share(weight=max(100 - percent - others, 0)),
        }
    )


def advance_rollouts() -> dict[str, int]:
    """Judge every running rollout once (beat)."""
    counts = {"advanced": 0, "rolled_back": 0, "succeeded": 0, "waiting": 0}
    for rollout_id in Rollout.objects.filter(state=Rollout.State.RUNNING).values_list("pk", flat=True):
        outcome = _advance_one(rollout_id)
        if outcome in counts:
            counts[outcome] += 1
    return counts


@transaction.atomic
def _advance_one(rollout_id: int) -> str:
    rollout = (
        Rollout.objects.select_for_update(skip_locked=True)
        .select_related("deployment__model", "candidate__version", "baseline")
        .filter(pk=rollout_id, state=Rollout.State.RUNNING)
        .first()
    )
    if rollout is None:
        return "skipped"
    now = timezone.now()
    if rollout.step_started_at is None:
        if not rollout.candidate.workers.filter(state=WorkerState.READY).exists():
            rollout.last_evaluation = {"at": now.isoformat(), "note": "waiting for a ready candidate replica"}
            rollout.save(update_fields=["last_evaluation", "updated_at"])
            return "waiting"
        _apply_step(rollout, now, reason=f"rollout step 1: {rollout.current_weight}%")
        return "advanced"
    figures = measure(rollout.candidate, since=rollout.step_started_at)
    summary = shadow_summary(variant_stats(rollout.deployment.name).get(rollout.candidate.name))
    figures["shadow_agreement"] = summary.argmax_agreement if summary else None
    rollout.last_evaluation = {"at": now.isoformat(), "step": rollout.step_index, **figures}
    breach = _breach(rollout, figures)
    if breach:
        _roll_back(rollout, now, breach, figures)
        return "rolled_back"
    held = (now - rollout.step_started_at) >= timedelta(seconds=rollout.hold_s)
    if not held or figures["requests"] < rollout.min_requests:
        if held:
            rollout.last_evaluation["note"] = f"waiting for {rollout.min_requests} requests to judge the step"
        rollout.save(update_fields=["last_evaluation", "updated_at"])
        return "waiting"
    if rollout.step_index + 1 >= len(rollout.steps):
        rollout.state = Rollout.State.SUCCEEDED
        rollout.finished_at = now
        rollout.reason = f"met the objective at every step ({_figures_text(figures)})"
        rollout.save()
        record_deployment_event(
            actor=None,
            action="rollout.succeeded",
            deployment=rollout.deployment,
            after=describe(rollout),
            reason=rollout.reason,
        )
        return "succeeded"
    rollout.step_index += 1
    _apply_step(
        rollout,
        now,
        reason=f"rollout step {rollout.step_index + 1}: {rollout.current_weight}% "
        f"after {_figures_text(figures)}",
    )
    return "advanced"


def _apply_step(rollout: Rollout, now: Any, *, reason: str) -> None:
    set_traffic_split(
        deployment=rollout.deployment,
        split=_weights_for(rollout, rollout.current_weight),
        actor=None,
        reason=reason,
        kind=TrafficChange.Kind.ROLLOUT,
    )
    rollout.step_started_at = now
    rollout.save()


def _figures_text(figures: dict[str, Any]) -> str:
    rate = "n/a" if figures.get("error_rate") is None else f"{figures['error_rate']:.1%}"
    p99 = "n/a" if figures.get("p99_ms") is None else f"{figures['p99_ms']:.1f} ms"
    return f"{figures.get('requests', 0)} requests, error rate {rate}, p99 {p99}"


def _roll_back(rollout: Rollout, now: Any, breach: str, figures: dict[str, Any]) -> None:
    reason = f"rolled back at {rollout.current_weight}%: {breach} (measured {_figures_text(figures)})"
    set_traffic_split(
        deployment=rollout.deployment,
        split=_weights_for(rollout, 0),
        actor=None,
        reason=reason,
        kind=TrafficChange.Kind.ROLLBACK,
        check_ready=False,
    )
    rollout.state = Rollout.State.ROLLED_BACK
    rollout.finished_at = now
    rollout.reason = reason
    rollout.save()
    record_deployment_event(
        actor=None,
        action="rollout.rolled_back",
        deployment=rollout.deployment,
        after=describe(rollout),
        reason=reason,
    )


@transaction.atomic
def control_rollout(*, rollout: Rollout, command: str, actor: Actor) -> Rollout:
    """Pause, resume or abort a rollout. Abort sends the candidate's traffic back to the baseline."""
    locked = (
        Rollout.objects.select_for_update()
        .select_related("deployment", "candidate", "baseline")
        .get(pk=rollout.pk)
    )
    transitions = {
        "pause": ({Rollout.State.RUNNING}, Rollout.State.PAUSED),
        "resume": ({Rollout.State.PAUSED}, Rollout.State.RUNNING),
        "abort": ({Rollout.State.RUNNING, Rollout.State.PAUSED}, Rollout.State.ABORTED),
    }
    if command not in transitions:
        raise InvalidDeploymentError("command: pause, resume or abort")
    allowed, target = transitions[command]
    if locked.state not in allowed:
        raise InvalidDeploymentError(f"cannot {command} a rollout that is {locked.state}")
    locked.state = target
    if command == "resume" and locked.step_started_at is not None:
        locked.step_started_at = timezone.now()  # a fresh hold after a pause
    if command == "abort":
        locked.finished_at = timezone.now()
        locked.reason = "aborted by a user"
        set_traffic_split(
            deployment=locked.deployment,
            split=_weights_for(locked, 0),
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
