"""Autoscaling: a variant's policy (set, removed: audited) and the tick that applies decisions.

The tick runs from beat every ``KILN_AUTOSCALE_INTERVAL_S`` under an advisory lock. For every
variant with a policy in a running deployment, it observes the load (``autoscaling.load``),
decides (``autoscaling.decide``, pure) and, when the count changes, writes the variant's
``replicas`` with a ``ScalingDecision`` row saying why, then asks the reconcile loop to act:
only that loop starts and drains workers, the same way on every backend, so a replica that
goes is drained first like any other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from config import dispatch
from config.locks import advisory_lock
from config.metrics.events import record_scaling_decision
from deployments.autoscaling import load
from deployments.autoscaling.decide import Decision, decide
from deployments.autoscaling.models import ScalingDecision, ScalingPolicy
from deployments.inputs import AutoscalingPolicy
from deployments.models import Rollout, Variant, WorkerState
from deployments.services.events import enqueue_reconcile, record_deployment_event
from deployments.services.gateway_stats import read_snapshots
from inference_worker.contracts.gateway_stats import GatewaySnapshot
from registry.audit import Actor

logger = logging.getLogger(__name__)


def policy_of(variant: Variant) -> AutoscalingPolicy | None:
    """The variant's policy as a typed value; None when it runs a fixed replica count."""
    row: ScalingPolicy | None = getattr(variant, "autoscaling", None)
    return None if row is None else AutoscalingPolicy(**row.values())


def _locked(variant: Variant) -> Variant:
    return Variant.objects.select_for_update().select_related("deployment__model").get(pk=variant.pk)


@transaction.atomic
def set_autoscaling(*, variant: Variant, policy: AutoscalingPolicy, actor: Actor) -> ScalingPolicy:
    """Turn autoscaling on for ``variant`` or change its policy; the replicas move into its bounds now."""
    locked = _locked(variant)
    row = ScalingPolicy.objects.filter(variant=locked).first()
    before = None if row is None else {"variant": locked.name, "replicas": locked.replicas, **row.values()}
    row = row or ScalingPolicy(variant=locked, last_active_at=timezone.now())
    for name, value in policy.values().items():
        setattr(row, name, value)
    row.save()
    replicas = min(max(locked.replicas, policy.min_replicas), policy.max_replicas)
    if replicas != locked.replicas:
        locked.replicas = replicas
        locked.save(update_fields=["replicas", "updated_at"])
    record_deployment_event(
        actor=actor,
        action="variant.autoscaling_changed",
        deployment=locked.deployment,
        before=before,
        after={"variant": locked.name, "replicas": locked.replicas, **policy.values()},
    )
    enqueue_reconcile(locked.deployment)
    dispatch.send_on_commit("deployments.publish_routing_table")  # the activate mark may change
    return row


@transaction.atomic
def remove_autoscaling(*, variant: Variant, actor: Actor) -> Variant:
    """Back to a fixed replica count: the one it runs now (at least one, so it keeps serving)."""
    locked = _locked(variant)
    row = ScalingPolicy.objects.filter(variant=locked).first()
    if row is None:
        return locked
    before = {"variant": locked.name, "replicas": locked.replicas, **row.values()}
    row.delete()
    if locked.replicas == 0:
        locked.replicas = 1
        locked.save(update_fields=["replicas", "updated_at"])
    record_deployment_event(
        actor=actor,
        action="variant.autoscaling_changed",
        deployment=locked.deployment,
        before=before,
        after={"variant": locked.name, "replicas": locked.replicas},
    )
    enqueue_reconcile(locked.deployment)
    dispatch.send_on_commit("deployments.publish_routing_table")
    transaction.on_commit(lambda: load.forget(locked.pk))
    return locked


def autoscale() -> dict[str, int]:
    """One tick over every autoscaled variant; returns how many were seen and changed."""
    counts = {"variants": 0, "changed": 0}
    with advisory_lock("deployments.autoscale") as taken:
        if not taken:
            return counts
        policies = ScalingPolicy.objects.select_related("variant__deployment").filter(
            variant__deployment__desired_running=True,
            variant__deployment__delete_requested_at__isnull=True,
            variant__remove_requested_at__isnull=True,
        )
        rows = list(policies)
        if not rows:
            return counts
        snapshots = read_snapshots()
        wanted = load.take_activations()
        for row in rows:
            counts["variants"] += 1
            counts["changed"] += int(_tick(row, snapshots, wanted))
    return counts


def _tick(row: ScalingPolicy, snapshots: list[GatewaySnapshot], wanted: set[tuple[str, str]]) -> bool:
    variant, now = row.variant, time.time()
    deployment = variant.deployment
    policy = AutoscalingPolicy(**row.values())
    if policy.min_replicas == 0 and _must_keep_one(variant):
        policy = replace(policy, min_replicas=1)
    sample = load.observe(snapshots, deployment.name, variant.name, now)
    keep_s = max(policy.upscale_delay_s, policy.downscale_delay_s) + 5.0
    samples = load.remember(variant.pk, sample, keep_s=keep_s)
    activation = (deployment.name, variant.name) in wanted
    previous = samples[-2] if len(samples) > 1 else None
    active = (
        activation or sample.in_flight > 0 or (previous is not None and previous.requests != sample.requests)
    )
    if active:
        ScalingPolicy.objects.filter(pk=row.pk).update(last_active_at=_moment(now))
        row.last_active_at = _moment(now)
    decision = decide(
        policy=policy,
        replicas=variant.replicas,
        samples=samples,
        now=now,
        last_scaled_at=row.last_scaled_at.timestamp() if row.last_scaled_at else None,
        last_active_at=(row.last_active_at or row.created_at).timestamp(),
        activation=activation,
        warming=_warming(variant),
    )
    if decision.replicas == variant.replicas:
        return False
    return apply_decision(row=row, decision=decision, now=now)


def _warming(variant: Variant) -> bool:
    """A replica of the variant is starting and none is ready (a start from zero, or every one lost)."""
    states = set(
        variant.workers.filter(state__in=(WorkerState.STARTING, WorkerState.READY)).values_list(
            "state", flat=True
        )
    )
    return states == {WorkerState.STARTING}


def _must_keep_one(variant: Variant) -> bool:
    """A shadow, or a variant in a running rollout, keeps a replica: the guard and the copies need one.

    Shadow copies and a rollout's first step never reach the activator, so such a variant at zero
    would wait forever (and a cold start in a rollout's first step would count against its p99).
    """
    if variant.shadow_percent > 0:
        return True
    active = (Rollout.State.RUNNING, Rollout.State.PAUSED)
    return Rollout.objects.filter(Q(candidate=variant) | Q(baseline=variant), state__in=active).exists()


@transaction.atomic
def apply_decision(*, row: ScalingPolicy, decision: Decision, now: float) -> bool:
    """Write the new replica count and the decision row; the reconcile loop starts or drains workers."""
    locked = _locked(row.variant)
    if locked.replicas == decision.replicas:
        return False
    ScalingDecision.objects.create(
        variant=locked,
        from_replicas=locked.replicas,
        to_replicas=decision.replicas,
        reason=str(decision.reason),
        short_load=decision.short_load,
        long_load=decision.long_load,
        idle_s=decision.idle_s,
        policy=row.values(),
    )
    logger.info(
        "%s: %d -> %d replicas (%s; load %.2f short, %.2f long)",
        locked, locked.replicas, decision.replicas, decision.reason, decision.short_load, decision.long_load,
    )  # fmt: skip
    locked.replicas = decision.replicas
    locked.save(update_fields=["replicas", "updated_at"])
    ScalingPolicy.objects.filter(pk=row.pk).update(last_scaled_at=_moment(now))
    enqueue_reconcile(locked.deployment)
    name, variant, reason = locked.deployment.name, locked.name, str(decision.reason)
    transaction.on_commit(lambda: record_scaling_decision(deployment=name, variant=variant, reason=reason))
    return True


def _moment(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC)
