"""Traffic API: splits and their history, promote, shadow, guarded rollouts."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from deployments import histograms, queries
from deployments.api.traffic_serializers import (
    PromoteInput,
    PromotionOutput,
    RolloutInput,
    RolloutOutput,
    ShadowComparisonOutput,
    ShadowInput,
    TrafficChangeResultOutput,
    TrafficInput,
    TrafficOutput,
)
from deployments.models import Deployment, TrafficChange
from deployments.services import promotion, rollouts, traffic
from deployments.services.gateway_stats import ShadowSummary, shadow_summary, variant_stats
from inference_worker.contracts.histograms import HistogramRecord


class TrafficView(APIView):
    """``GET`` the split and its history; ``PUT`` a whole new split."""

    @extend_schema(responses=TrafficOutput)
    def get(self, request: Request, name: str) -> Response:
        deployment = queries.get_deployment(name)
        history = deployment.traffic_changes.all()[:100]
        return Response(
            TrafficOutput({"split": traffic.current_split(deployment).as_dict(), "history": history}).data
        )

    @extend_schema(request=TrafficInput, responses=TrafficChangeResultOutput)
    def put(self, request: Request, name: str) -> Response:
        deployment = queries.deployment_for_change(name, request.user)
        data = TrafficInput(data=request.data)
        data.is_valid(raise_exception=True)
        shadows = {n: share.shadow_percent for n, share in traffic.current_split(deployment).items()}
        change = traffic.set_traffic_split(
            deployment=deployment,
            split=data.to_split(shadows=shadows),
            actor=request.user,
            reason=data.validated_data["reason"],
        )
        return _changed(deployment, change)


def _changed(deployment: Deployment, change: TrafficChange | None) -> Response:
    """The split after a change, and the change (null when nothing changed)."""
    split = traffic.current_split(deployment).as_dict()
    return Response(TrafficChangeResultOutput({"split": split, "change": change}).data)


class RestoreView(APIView):
    """Restore the split an earlier change set."""

    @extend_schema(request=None, responses=TrafficChangeResultOutput)
    def post(self, request: Request, name: str, change_id: int) -> Response:
        deployment = queries.deployment_for_change(name, request.user)
        change = traffic.restore_split(deployment=deployment, change_id=change_id, actor=request.user)
        return _changed(deployment, change)


class PromoteView(APIView):
    """Promote now (forced, recorded): the stable variant takes this variant's version, its alias
    moves, and the traffic goes back to it once its replicas serve that version."""

    @extend_schema(request=PromoteInput, responses=PromotionOutput)
    def post(self, request: Request, name: str, variant: str) -> Response:
        deployment = queries.deployment_for_change(name, request.user)
        data = PromoteInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        rollout = promotion.promote_variant(
            deployment=deployment,
            variant_name=variant,
            actor=request.user,
            reason=data.validated_data["reason"],
        )
        split = traffic.current_split(deployment).as_dict()
        return Response(PromotionOutput({"split": split, "rollout": rollout}).data)


class ShadowView(APIView):
    """``PUT {"percent": n}`` makes a weight-0 variant a shadow; ``GET`` compares it with the live answers."""

    @extend_schema(responses=ShadowComparisonOutput)
    def get(self, request: Request, name: str, variant: str) -> Response:
        queries.get_variant(name, variant)
        summary = shadow_summary(variant_stats(name).get(variant))
        report = shadow_report(summary) if summary is not None else _NO_COMPARISON
        return Response(ShadowComparisonOutput({"variant": variant, **report}).data)

    @extend_schema(request=ShadowInput, responses=TrafficChangeResultOutput)
    def put(self, request: Request, name: str, variant: str) -> Response:
        row = queries.variant_for_change(name, variant, request.user)
        data = ShadowInput(data=request.data)
        data.is_valid(raise_exception=True)
        change = traffic.set_shadow(variant=row, percent=data.validated_data["percent"], actor=request.user)
        return _changed(row.deployment, change)


_NO_QUANTILES = {"p50": None, "p95": None, "p99": None}
_NO_COMPARISON: dict[str, Any] = {
    "compared": 0,
    "sent": 0,
    "dropped": 0,
    "errors": 0,
    "argmax_agreement": None,
    "mean_max_abs_diff": None,
    "max_abs_diff": None,
    "shadow_latency_ms": _NO_QUANTILES,
    "live_latency_ms": _NO_QUANTILES,
}


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
        deployment = queries.deployment_for_change(name, request.user)
        data = RolloutInput(data=request.data)
        data.is_valid(raise_exception=True)
        rollout = rollouts.start_rollout(deployment=deployment, policy=data.policy(), actor=request.user)
        return Response(RolloutOutput(rollout).data, status=201)


class RolloutDetailView(APIView):
    """Read a rollout; ``POST .../pause|resume|abort/`` controls it."""

    @extend_schema(responses=RolloutOutput)
    def get(self, request: Request, name: str, rollout_id: int) -> Response:
        return Response(RolloutOutput(queries.get_rollout(name, rollout_id)).data)


class RolloutControlView(APIView):
    @extend_schema(request=None, responses=RolloutOutput)
    def post(self, request: Request, name: str, rollout_id: int, command: str) -> Response:
        rollout = queries.rollout_for_change(name, rollout_id, request.user)
        updated = rollouts.control_rollout(rollout=rollout, command=command, actor=request.user)
        return Response(RolloutOutput(updated).data)
