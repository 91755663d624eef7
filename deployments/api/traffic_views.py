"""Traffic API: splits and their history, promote, shadow, guarded rollouts."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import NotFoundError
from deployments import histograms, queries
from deployments.models import Rollout, TrafficChange
from deployments.services import rollouts, traffic
from deployments.services.gateway_stats import ShadowSummary, shadow_summary, variant_stats
from inference_worker.contracts.histograms import HistogramRecord
from registry.permissions import ensure_can_change


class TrafficChangeOutput(serializers.ModelSerializer[TrafficChange]):
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = TrafficChange
        fields = ("id", "kind", "actor", "before", "after", "reason", "created_at")


class RolloutOutput(serializers.ModelSerializer[Rollout]):
    candidate = serializers.CharField(source="candidate.name")
    baseline = serializers.CharField(source="baseline.name")
    current_weight = serializers.IntegerField(read_only=True)

    class Meta:
        model = Rollout
        fields = (
            "id",
            "state",
            "candidate",
            "baseline",
            "steps",
            "step_index",
            "current_weight",
            "hold_s",
            "max_error_rate",
            "max_p99_ms",
            "min_shadow_agreement",
            "min_requests",
            "step_started_at",
            "last_evaluation",
            "reason",
            "created_at",
            "finished_at",
        )


class TrafficInput(serializers.Serializer[Any]):
    split = serializers.DictField(
        help_text='{"a": 90, "b": 10} or {"a": {"weight": 90, "shadow_percent": 0}}'
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class RolloutInput(serializers.Serializer[Any]):
    candidate = serializers.CharField(max_length=64)
    baseline = serializers.CharField(max_length=64, required=False)
    steps = serializers.ListField(child=serializers.IntegerField(), default=[5, 25, 50, 100])
    hold_s = serializers.FloatField(default=60.0)
    max_error_rate = serializers.FloatField(default=0.01)
    max_p99_ms = serializers.FloatField(default=1000.0)
    min_shadow_agreement = serializers.FloatField(required=False, allow_null=True)
    min_requests = serializers.IntegerField(default=20, min_value=1)


class ShadowInput(serializers.Serializer[Any]):
    percent = serializers.IntegerField()


def _split_body(data: Any) -> tuple[Any, str]:
    if isinstance(data, dict) and "split" in data:
        return data["split"], str(data.get("reason", ""))[:2000]
    if isinstance(data, dict):
        body = dict(data)
        reason = str(body.pop("reason", ""))[:2000]
        return body, reason
    return data, ""


class TrafficView(APIView):
    """``GET`` the split and its history; ``PUT`` a whole new split."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, name: str) -> Response:
        deployment = queries.get_deployment(name)
        history = deployment.traffic_changes.all()[:100]
        return Response(
            {
                "split": traffic.current_split(deployment),
                "history": TrafficChangeOutput(history, many=True).data,
            }
        )

    @extend_schema(request=TrafficInput, responses={200: dict})
    def put(self, request: Request, name: str) -> Response:
        deployment = queries.get_deployment(name)
        ensure_can_change(request.user, deployment.model)
        split, reason = _split_body(request.data)
        change = traffic.set_traffic_split(
            deployment=deployment, split=split, actor=request.user, reason=reason
        )
        return Response(
            {
                "split": traffic.current_split(deployment),
                "change": TrafficChangeOutput(change).data if change else None,
            }
        )


class RestoreView(APIView):
    """Restore the split an earlier change set."""

    @extend_schema(request=None, responses={200: dict})
    def post(self, request: Request, name: str, change_id: int) -> Response:
        deployment = queries.get_deployment(name)
        ensure_can_change(request.user, deployment.model)
        change = traffic.restore_split(deployment=deployment, change_id=change_id, actor=request.user)
        return Response(
            {
                "split": traffic.current_split(deployment),
                "change": TrafficChangeOutput(change).data if change else None,
            }
        )


class PromoteView(APIView):
    """All traffic to this variant; a followed alias moves to its version."""

    @extend_schema(request=None, responses={200: dict})
    def post(self, request: Request, name: str, variant: str) -> Response:
        deployment = queries.get_deployment(name)
        ensure_can_change(request.user, deployment.model)
        change = traffic.promote_variant(deployment=deployment, variant_name=variant, actor=request.user)
        return Response(
            {
                "split": traffic.current_split(deployment),
                "change": TrafficChangeOutput(change).data if change else None,
            }
        )


class ShadowView(APIView):
    """``PUT {"percent": n}`` makes a weight-0 variant a shadow; ``GET`` compares it with the live answers."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, name: str, variant: str) -> Response:
        queries.get_variant(name, variant)
        summary = shadow_summary(variant_stats(name).get(variant))
        if summary is None:
            return Response({"variant": variant, "compared": 0})
        return Response({"variant": variant, **shadow_report(summary)})

    @extend_schema(request=ShadowInput, responses={200: dict})
    def put(self, request: Request, name: str, variant: str) -> Response:
        row = queries.get_variant(name, variant)
        ensure_can_change(request.user, row.deployment.model)
        data = ShadowInput(data=request.data)
        data.is_valid(raise_exception=True)
        traffic.set_shadow(variant=row, percent=data.validated_data["percent"], actor=request.user)
        return Response({"split": traffic.current_split(row.deployment)})


def shadow_report(summary: ShadowSummary) -> dict[str, Any]:
    """Agreement and latency of shadow vs live, with percentiles from the histograms."""

    def percentiles(histogram: HistogramRecord) -> dict[str, float | None]:
        return {f"p{round(q * 100)}": histograms.quantile_of(histogram, q) for q in (0.5, 0.95, 0.99)}

    return {
        "sent": summary.sent,
        "dropped": summary.dropped,
        "errors": summary.errors,
        "compared": summary.compared,
        "argmax_agreement": summary.argmax_agreement,
        "mean_max_abs_diff": summary.mean_max_abs_diff,
        "max_abs_diff": summary.max_abs_diff,
        "shadow_latency_ms": percentiles(summary.latency_ms),
        "live_latency_ms": percentiles(summary.live_latency_ms),
    }


class RolloutListView(APIView):
    """List rollouts of a deployment, or start one."""

    @extend_schema(responses=RolloutOutput(many=True))
    def get(self, request: Request, name: str) -> Response:
        deployment = queries.get_deployment(name)
        rows = deployment.rollouts.select_related("candidate", "baseline")[:50]
        return Response(RolloutOutput(rows, many=True).data)

    @extend_schema(request=RolloutInput, responses={201: RolloutOutput})
    def post(self, request: Request, name: str) -> Response:
        deployment = queries.get_deployment(name)
        ensure_can_change(request.user, deployment.model)
        data = RolloutInput(data=request.data)
        data.is_valid(raise_exception=True)
        rollout = rollouts.start_rollout(deployment=deployment, actor=request.user, **data.validated_data)  # type: ignore[arg-type]
        return Response(RolloutOutput(rollout).data, status=201)


class RolloutDetailView(APIView):
    """Read a rollout; ``POST .../pause|resume|abort/`` controls it."""

    @extend_schema(responses=RolloutOutput)
    def get(self, request: Request, name: str, rollout_id: int) -> Response:
        return Response(RolloutOutput(_rollout(name, rollout_id)).data)


class RolloutControlView(APIView):
    @extend_schema(request=None, responses=RolloutOutput)
    def post(self, request: Request, name: str, rollout_id: int, command: str) -> Response:
        rollout = _rollout(name, rollout_id)
        ensure_can_change(request.user, rollout.deployment.model)
        updated = rollouts.control_rollout(rollout=rollout, command=command, actor=request.user)
        return Response(RolloutOutput(updated).data)


def _rollout(name: str, rollout_id: int) -> Rollout:
    rollout = (
        Rollout.objects.select_related("deployment__model", "candidate", "baseline")
        .filter(deployment__name=name, pk=rollout_id)
        .first()
    )
    if rollout is None:
        raise NotFoundError(f"deployment {name!r} has no rollout {rollout_id}")
    return rollout
