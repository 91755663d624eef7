"""The release records of a deployment: traffic changes and guarded rollouts."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from registry.models import ModelVersion


class TrafficChange(models.Model):
    """One change of a deployment's traffic split: who, when, why, the split before and after.

    ``before``/``after`` map variant names to ``{"weight": w, "shadow_percent": s}``;
    any earlier split can be restored from its row.
    """

    class Kind(models.TextChoices):
        MANUAL = "manual", "Manual"
        PROMOTE = "promote", "Promote"
        RESTORE = "restore", "Restore"
        ROLLOUT = "rollout", "Rollout step"
        ROLLBACK = "rollback", "Automatic rollback"

    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="traffic_changes"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.MANUAL)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=150)
    before = models.JSONField()
    after = models.JSONField()
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.deployment.name}: {self.split_label(self.after)}"

    @staticmethod
    def split_label(split: dict[str, Any]) -> str:
        parts = [f"{name} {v.get('weight', 0)}%" for name, v in split.items()]
        shadows = [
            f"{name} shadow {v['shadow_percent']}%" for name, v in split.items() if v.get("shadow_percent")
        ]
        return " / ".join(parts) + (f" ({', '.join(shadows)})" if shadows else "")


ACTIVE_ROLLOUT_STATES = ("waiting_for_replicas", "running", "paused", "promoting")


class Rollout(models.Model):
    """A guarded rollout: a candidate variant moves through weight steps while it meets its objectives.

    It waits (``waiting_for_replicas``) until the candidate has a ready replica, then beat applies
    each step, measures every objective over it and advances once each has ``min_requests``
    samples and the hold passed; a breach rolls it back. The last step ends in a promotion
    (``promoting``): the stable variant takes the candidate's version, and once its replicas run it
    the traffic moves back to the stable variant (``succeeded``). A manual promote is a rollout row
    too, ``forced`` and without steps. ``history`` keeps the evaluation that closed each step.
    """

    class State(models.TextChoices):
        WAITING = "waiting_for_replicas", "Waiting for a ready replica"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        PROMOTING = "promoting", "Promoting"
        SUCCEEDED = "succeeded", "Succeeded"
        ROLLED_BACK = "rolled_back", "Rolled back"
        ABORTED = "aborted", "Aborted"
        TIMED_OUT = "timed_out", "Timed out"

    class Trigger(models.TextChoices):
        USER = "user", "Started by a user"
        ALIAS_MOVE = "alias_move", "Alias moved"
        PROMOTE = "promote", "Promoted by a user"

    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="rollouts"
    )
    candidate = models.ForeignKey("deployments.Variant", on_delete=models.CASCADE, related_name="rollouts")
    baseline = models.ForeignKey("deployments.Variant", on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        null=True,
        related_name="+",
        help_text="the version rolled out",
    )
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.USER)
    forced = models.BooleanField(default=False, help_text="a person moved traffic past the guards")
    steps = models.JSONField(help_text="candidate weights, e.g. [5, 25, 50, 100]")
    hold_s = models.FloatField(validators=[MinValueValidator(1.0)])
    max_error_rate = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    max_p99_ms = models.FloatField(validators=[MinValueValidator(0.1)])
    min_shadow_agreement = models.FloatField(null=True, blank=True)
    min_requests = models.PositiveIntegerField(default=100, help_text="samples needed to judge a step")
    replica_timeout_s = models.FloatField(default=600.0, help_text="wait for a ready candidate replica")
    state = models.CharField(max_length=24, choices=State.choices, default=State.WAITING, db_index=True)
    step_index = models.PositiveSmallIntegerField(default=0)
    step_started_at = models.DateTimeField(null=True, blank=True)
    shadow_mark = models.JSONField(default=dict, blank=True, help_text="shadow counters at the step's start")
    last_evaluation = models.JSONField(default=dict, blank=True)
    history = models.JSONField(default=list, blank=True, help_text="the evaluation that closed each step")
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("deployment",),
                condition=models.Q(state__in=ACTIVE_ROLLOUT_STATES),
                name="one_active_rollout_per_deployment",
            )
        ]

    def __str__(self) -> str:
        return f"rollout of {self.candidate} ({self.state})"

    @property
    def current_weight(self) -> int:
        steps: list[int] = self.steps
        return int(steps[min(self.step_index, len(steps) - 1)])

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_ROLLOUT_STATES
