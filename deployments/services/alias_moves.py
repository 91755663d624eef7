"""What a deployment does when an alias that one of its variants follows moves.

- A variant that carries no traffic (weight 0, no shadow) follows at once.
- A variant that carries traffic follows by its deployment's ``on_alias_move``:
  ``rollout`` (the default) starts a guarded rollout of the new version from the stable variant
  through a candidate variant named ``candidate`` (made with the stable variant's settings, or
  reused while it carries no traffic), whose success promotes the version (``services.promotion``);
  ``immediate`` follows at once, recorded as forced with the person who moved the alias;
  ``manual`` waits for a person to roll it out or promote it.
- A variant that does not serve its alias' version says why in ``follow_note`` (the deployment
  page, the API and the dashboard show it).

The registry's ``alias_moved`` hook calls ``on_alias_moved`` after the commit and the reconcile loop
calls ``follow_pending`` on every pass; both are idempotent: a rollout of the version that is in
progress, or that ended without success, is not started again.
"""

from __future__ import annotations

import logging

from django.db import transaction

from config.errors import PlatformError
from deployments.inputs import RolloutPolicy, VariantSpec, VersionTarget
from deployments.models import ACTIVE_ROLLOUT_STATES, AliasMovePolicy, Deployment, Rollout, Variant
from deployments.services.deployments import add_variant, describe_variant
from deployments.services.events import enqueue_reconcile, record_deployment_event
from deployments.services.rollouts import start_rollout
from inference_worker.contracts import batching as table
from registry.audit import Actor
from registry.models import Alias, ModelVersion, VersionStatus

logger = logging.getLogger(__name__)
CANDIDATE_NAME = "candidate"


def on_alias_moved(*, alias_id: int) -> None:
    """Called by the registry after an alias move commits."""
    alias = Alias.objects.select_related("version", "model", "updated_by").filter(pk=alias_id).first()
    if alias is not None:
        follow_alias(alias=alias)


def follow_alias(*, alias: Alias) -> list[Variant]:
    """Apply the move of ``alias`` to every variant following it; returns those that moved now."""
    followers = Variant.objects.filter(
        deployment__model_id=alias.model_id,
        alias=alias.name,
        remove_requested_at__isnull=True,
        deployment__delete_requested_at__isnull=True,
    ).order_by("id")
    return [variant for variant in followers if _follow(variant.pk, alias)]


def follow_pending(deployment: Deployment) -> list[Variant]:
    """The reconcile loop's pass: followers of this deployment not on their alias' version."""
    moved: list[Variant] = []
    for variant in deployment.variants.exclude(alias="").filter(remove_requested_at__isnull=True):
        alias = (
            Alias.objects.select_related("version", "updated_by")
            .filter(model_id=deployment.model_id, name=variant.alias)
            .first()
        )
        if alias is None:
            _note(
                variant,
                f"alias {variant.alias} no longer exists; it keeps serving v{variant.version.version}",
            )
        elif (alias.version_id != variant.version_id or variant.follow_note) and _follow(variant.pk, alias):
            moved.append(variant)
    return moved


@transaction.atomic
def _follow(variant_id: int, alias: Alias) -> bool:
    variant = (
        Variant.objects.select_for_update(of=("self",))
        .select_related("deployment__model", "version")
        .get(pk=variant_id)
    )
    version = alias.version
    if variant.version_id == version.pk:
        _note(variant, "")
        return False
    if version.status != VersionStatus.READY:
        _note(
            variant,
            f"alias {alias.name} points at v{version.version}, which is {version.status}; "
            f"it keeps serving v{variant.version.version}",
        )
        return False
    moved = f"alias {alias.name} moved to v{version.version}"
    if not (variant.weight or variant.shadow_percent):
        _move(variant, version, reason=f"{moved}; {variant.name} carries no traffic, so it follows at once")
        return True
    policy = variant.deployment.on_alias_move
    if policy == AliasMovePolicy.IMMEDIATE:
        who = alias.updated_by.get_username() if alias.updated_by else "system"
        _move(
            variant,
            version,
            reason=f"{moved}; the deployment's policy is immediate: followed at once (forced by {who})",
            forced=True,
            actor=alias.updated_by,
        )
        return True
    if policy == AliasMovePolicy.MANUAL:
        _note(variant, f"{moved}; the deployment's policy is manual: roll it out or promote it by hand")
        return False
    _roll_out(variant, alias, moved)
    return False


def _roll_out(variant: Variant, alias: Alias, moved: str) -> None:
    """Start (once) the guarded rollout of the alias' new version for a variant carrying traffic."""
    deployment, version = variant.deployment, alias.version
    active = deployment.rollouts.filter(state__in=ACTIVE_ROLLOUT_STATES).first()
    if active is not None:
        doing = "is rolling it out" if active.version_id == version.pk else "must finish first"
        _note(variant, f"{moved}; rollout #{active.pk} ({active.state}) {doing}")
        return
    if not variant.is_stable:
        _note(
            variant,
            f"{moved}; {variant.name} carries {variant.weight}% of traffic and is not the stable variant: "
            "move its traffic or roll the version out by hand",
        )
        return
    ended = (
        deployment.rollouts.filter(trigger=Rollout.Trigger.ALIAS_MOVE, version=version)
        .exclude(state=Rollout.State.SUCCEEDED)
        .order_by("-created_at")
        .first()
    )
    if ended is not None:
        _note(variant, f"{moved}; its rollout #{ended.pk} ended {ended.state}: {ended.reason}")
        return
    try:
        candidate = _candidate(deployment, variant, version)
        rollout = start_rollout(
            deployment=deployment,
            policy=RolloutPolicy(candidate=candidate.name, baseline=variant.name),
            actor=alias.updated_by,
            trigger=Rollout.Trigger.ALIAS_MOVE,
        )
    except PlatformError as exc:
        _note(variant, f"{moved}; no rollout could start: {exc.message}")
        return
    _note(variant, f"{moved}; guarded rollout #{rollout.pk} through variant {candidate.name}")


def _candidate(deployment: Deployment, stable: Variant, version: ModelVersion) -> Variant:
    """The variant that carries the new version through the rollout: made like the stable one."""
    existing = deployment.variants.filter(name=CANDIDATE_NAME).first()
    if existing is None:
        spec = VariantSpec(
            target=VersionTarget(version=version.version),
            name=CANDIDATE_NAME,
            replicas=max(stable.replicas, 1),
            gpu_ids=tuple(stable.gpu_ids or ()),
            backend=stable.backend,
            batching={name: getattr(stable, name) for name in table.BATCHING},
        )
        return add_variant(deployment=deployment, spec=spec, actor=None)
    if existing.remove_requested_at is not None or existing.weight or existing.shadow_percent:
        raise PlatformError(f"variant {CANDIDATE_NAME!r} carries traffic or is being removed")
    if existing.version_id != version.pk or existing.alias:
        existing.alias = ""
        _move(existing, version, reason=f"candidate of the rollout of v{version.version}")
    return existing


def _move(
    variant: Variant, version: ModelVersion, *, reason: str, forced: bool = False, actor: Actor = None
) -> None:
    before = describe_variant(variant)
    variant.version = version
    if not variant.alias:
        variant.pinned_version = version
    variant.follow_note = ""
    variant.save(update_fields=["version", "pinned_version", "alias", "follow_note", "updated_at"])
    record_deployment_event(
        actor=actor,
        action="variant.version_changed",
        deployment=variant.deployment,
        before=before,
        after={**describe_variant(variant), "forced": forced},
        reason=reason,
    )
    enqueue_reconcile(variant.deployment)


def _note(variant: Variant, text: str) -> None:
    if variant.follow_note != text:
        Variant.objects.filter(pk=variant.pk).update(follow_note=text)
        variant.follow_note = text
        if text:
            logger.info("%s: %s", variant, text)
