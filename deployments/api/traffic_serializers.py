"""Input and output serializers of the traffic API: splits and their history, shadow, rollouts."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from config.api_inputs import Input
from deployments.inputs import RolloutPolicy, Split
from deployments.models import Rollout, TrafficChange


class ShareOutput(serializers.Serializer[Any]):
    """One variant's part of a split."""

    weight = serializers.IntegerField(help_text="percent of live requests")
    shadow_percent = serializers.IntegerField(help_text="percent of live requests copied to it")


class TrafficChangeOutput(serializers.ModelSerializer[TrafficChange]):
    actor = serializers.CharField(source="actor_label")
    before = serializers.DictField(child=ShareOutput())
    after = serializers.DictField(child=ShareOutput())

    class Meta:
        model = TrafficChange
        fields = ("id", "kind", "actor", "before", "after", "reason", "created_at")


class TrafficOutput(serializers.Serializer[Any]):
    """The split as stored now, with its history (newest first)."""

    split = serializers.DictField(child=ShareOutput())
    history = TrafficChangeOutput(many=True)


class TrafficChangeResultOutput(serializers.Serializer[Any]):
    """The split after a change, and the change's history row (null when nothing changed)."""

    split = serializers.DictField(child=ShareOutput())
    change = TrafficChangeOutput(allow_null=True)


class LatencyQuantilesOutput(serializers.Serializer[Any]):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)


class ShadowComparisonOutput(serializers.Serializer[Any]):
    """How a shadow variant's answers compare with the live ones (counts are zero before any)."""

    variant = serializers.CharField()
    compared = serializers.IntegerField()
    sent = serializers.IntegerField()
    dropped = serializers.IntegerField()
    argmax_agreement = serializers.FloatField(allow_null=True)
    mean_max_abs_diff = serializers.FloatField(allow_null=True)
    max_abs_diff = serializers.FloatField(allow_null=True)
    shadow_latency_ms = LatencyQuantilesOutput()
    live_latency_ms = LatencyQuantilesOutput()

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        # "errors" names a property of every serializer, so it cannot be a class attribute.
        fields["errors"] = serializers.IntegerField(help_text="copies the shadow answered with an error")
        return fields


class RolloutOutput(serializers.ModelSerializer[Rollout]):
    """A rollout; ``last_evaluation.objectives`` has each objective's bound, value and sample size,
    ``history`` the evaluation that closed each step."""

    candidate = serializers.CharField(source="candidate.name")
    baseline = serializers.CharField(source="baseline.name")
    version = serializers.IntegerField(source="version.version", default=None)
    created_by: serializers.StringRelatedField[Any] = serializers.StringRelatedField()
    current_weight = serializers.IntegerField(read_only=True)

    class Meta:
        model = Rollout
        fields = (
            "id",
            "state",
            "candidate",
            "baseline",
            "version",
            "trigger",
            "forced",
            "created_by",
            "steps",
            "step_index",
            "current_weight",
            "hold_s",
            "max_error_rate",
            "max_p99_ms",
            "min_shadow_agreement",
            "min_requests",
            "replica_timeout_s",
            "step_started_at",
            "last_evaluation",
            "history",
            "reason",
            "created_at",
            "finished_at",
        )


class TrafficInput(Input):
    """A whole split; the bare form ``{"a": 90, "b": 10, "reason": "..."}`` is accepted too."""

    split = serializers.DictField(
        help_text='{"a": 90, "b": 10} or {"a": {"weight": 90, "shadow_percent": 0}}'
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and "split" not in data:
            body = dict(data)
            reason = body.pop("reason", "")
            data = {"split": body, "reason": reason}
        if not isinstance(data, dict) or not isinstance(data.get("split"), dict) or not data["split"]:
            Split.parse(None)  # raises the message that shows the shape
        return super().to_internal_value(data)

    def to_split(self, *, shadows: dict[str, int]) -> Split:
        return Split.parse(self.validated_data["split"], shadows=shadows)


def _default(name: str) -> Any:
    value = RolloutPolicy.default(name)
    return list(value) if isinstance(value, tuple) else value


class RolloutInput(Input):
    """A rollout policy; defaults and bounds are ``RolloutPolicy``'s."""

    candidate = serializers.CharField(max_length=64)
    baseline = serializers.CharField(max_length=64, required=False, allow_null=True, default=None)
    steps = serializers.ListField(child=serializers.IntegerField(), default=_default("steps"))
    hold_s = serializers.FloatField(default=_default("hold_s"))
    max_error_rate = serializers.FloatField(default=_default("max_error_rate"))
    max_p99_ms = serializers.FloatField(default=_default("max_p99_ms"))
    min_shadow_agreement = serializers.FloatField(required=False, allow_null=True, default=None)
    min_requests = serializers.IntegerField(
        default=_default("min_requests"), help_text="samples each objective needs at each step"
    )
    replica_timeout_s = serializers.FloatField(
        default=_default("replica_timeout_s"), help_text="how long to wait for a ready candidate replica"
    )

    def policy(self) -> RolloutPolicy:
        data = dict(self.validated_data)
        return RolloutPolicy(**{**data, "steps": tuple(data["steps"])})


class PromoteInput(Input):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class PromotionOutput(serializers.Serializer[Any]):
    """The split right after a promotion, and the promotion (a forced rollout row, ``promoting``
    until the stable variant serves the version, then ``succeeded``)."""

    split = serializers.DictField(child=ShareOutput())
    rollout = RolloutOutput()


class ShadowInput(Input):
    percent = serializers.IntegerField()
