"""A variant's autoscaling policy and the decisions taken under it (imported by ``deployments.models``)."""

from __future__ import annotations

from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from deployments.autoscaling import table
from inference_worker.contracts.options import OptionField


def _column(option: OptionField[Any]) -> dict[str, Any]:
    """A policy column's default and bounds, from the option table."""
    return {
        "default": option.default,
        "help_text": option.help,
        "validators": [MinValueValidator(option.low), MaxValueValidator(option.high)],
    }


class ScalingPolicy(models.Model):
    """The autoscaling policy of one variant; without one, the variant keeps its fixed replica count.

    The autoscaler writes the variant's ``replicas`` (desired state, as a manual scale does) and
    keeps here when it last changed them and when the variant last had a request.
    """

    variant = models.OneToOneField(
        "deployments.Variant", on_delete=models.CASCADE, related_name="autoscaling"
    )
    min_replicas = models.PositiveSmallIntegerField(**_column(table.MIN_REPLICAS))
    max_replicas = models.PositiveSmallIntegerField(**_column(table.MAX_REPLICAS))
    target_in_flight = models.FloatField(**_column(table.TARGET_IN_FLIGHT))
    upscale_delay_s = models.FloatField(**_column(table.UPSCALE_DELAY_S))
    downscale_delay_s = models.FloatField(**_column(table.DOWNSCALE_DELAY_S))
    idle_before_zero_s = models.FloatField(**_column(table.IDLE_BEFORE_ZERO_S))
    last_scaled_at = models.DateTimeField(null=True, blank=True)
    last_active_at = models.DateTimeField(null=True, blank=True, help_text="its last request seen")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "scaling policies"

    def __str__(self) -> str:
        return f"autoscaling of {self.variant}"

    def values(self) -> dict[str, Any]:
        """The options by name, in the table's order."""
        return {name: getattr(self, name) for name in table.AUTOSCALING}


class ScalingDecision(models.Model):
    """One change of a variant's replicas by the autoscaler, with what it saw (why it scaled)."""

    class Reason(models.TextChoices):
        LOAD_UP = "load_up", "Load rose"
        LOAD_DOWN = "load_down", "Load fell"
        IDLE = "idle", "Idle: scaled to zero"
        ACTIVATE = "activate", "Request while at zero"
        MINIMUM = "minimum", "Below the minimum"
        MAXIMUM = "maximum", "Above the maximum"

    variant = models.ForeignKey("deployments.Variant", on_delete=models.CASCADE, related_name="scaling")
    from_replicas = models.PositiveSmallIntegerField()
    to_replicas = models.PositiveSmallIntegerField()
    reason = models.CharField(max_length=16, choices=Reason.choices)
    short_load = models.FloatField(help_text="mean requests in flight over the upscale window")
    long_load = models.FloatField(
        help_text="the highest upscale-window mean in flight over the downscale window"
    )
    idle_s = models.FloatField(null=True, blank=True, help_text="seconds since its last request")
    policy = models.JSONField(default=dict, help_text="the policy it applied")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.variant}: {self.from_replicas} -> {self.to_replicas} ({self.reason})"
