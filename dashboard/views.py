"""The metrics dashboard (staff only): overview, per-deployment charts, and their JSON feeds."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import user_passes_test
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dashboard.advice import advise
from deployments import queries, series
from deployments.models import Rollout
from registry import queries as registry_queries


def _is_staff(user: Any) -> bool:
    return bool(user.is_active and user.is_staff)


staff_member_required = user_passes_test(_is_staff, login_url="login")


@staff_member_required
def overview_page(request: HttpRequest) -> HttpResponse:
    rows = series.overview()
    query = request.GET.get("q", "").strip().lower()
    if query:
        rows = [
            r
            for r in rows
            if query in r["name"].lower() or query in r["model"].lower() or query in r["status"]
        ]
    return render(request, "dashboard/overview.html", {"rows": rows, "q": query})


@staff_member_required
def deployment_page(request: HttpRequest, name: str) -> HttpResponse:
    deployment = queries.get_deployment(name)
    context = {
        "deployment": deployment,
        "variants": list(deployment.variants.all()),
        "history": deployment.traffic_changes.all()[:50],
        "rollouts": Rollout.objects.filter(deployment=deployment).select_related("candidate", "baseline")[
            :20
        ],
        "ranges": list(series.RANGES),
    }
    return render(request, "dashboard/deployment.html", context)


class OverviewApi(APIView):
    """Every deployment with its live numbers (last minute), problems first."""

    permission_classes = [IsAdminUser]

    @extend_schema(parameters=[OpenApiParameter("window_s", int)], responses={200: dict})
    def get(self, request: Request) -> Response:
        window = int(min(max(_positive(request.query_params.get("window_s"), 60, "window_s"), 10), 3600))
        return Response({"window_s": window, "deployments": series.overview(window_s=window)})


class SeriesApi(APIView):
    """Time series of one deployment per variant and worker over 15m, 1h, 24h or 7d."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        parameters=[OpenApiParameter("range", str, enum=list(series.RANGES))], responses={200: dict}
    )
    def get(self, request: Request, name: str) -> Response:
        """Answers 304 to ``If-None-Match`` while nothing the series shows has changed."""
        deployment = queries.get_deployment(name)
        range_name = request.query_params.get("range", "15m")
        now = timezone.now()
        etag = series.series_etag(deployment, range_name, now=now)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if etag in request.headers.get("If-None-Match", ""):
            return Response(status=304, headers=headers)
        return Response(series.deployment_series(deployment, range_name, now=now), headers=headers)


class VersionLiveApi(APIView):
    """Live numbers of the deployments serving one version (staff only, like the dashboard)."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: dict})
    def get(self, request: Request, name: str, number: int) -> Response:
        version = registry_queries.get_version(name, number)
        return Response({"version": version.version, "serving": series.version_numbers(version.pk)})


def _positive(raw: Any, default: float, field: str) -> float:
    from config.errors import PlatformError

    try:
        value = float(raw) if raw not in (None, "") else default
    except (TypeError, ValueError):
        raise PlatformError(f"{field}: must be a number") from None
    if not 0 < value < 1e9 or value != value:
        raise PlatformError(f"{field}: must be a positive number")
    return value


class AdviceApi(APIView):
    """Batch size, queue delay, instances and protocol meeting a latency budget and throughput target."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[OpenApiParameter("latency_budget_ms", float), OpenApiParameter("target_rps", float)],
        responses={200: dict},
    )
    def get(self, request: Request, name: str, number: int) -> Response:
        version = registry_queries.get_version(name, number)
        budget = _positive(request.query_params.get("latency_budget_ms"), 50.0, "latency_budget_ms")
        target = _positive(request.query_params.get("target_rps"), 100.0, "target_rps")
        advice = advise(version.report or {}, budget_ms=budget, target_rps=target)
        return Response({"latency_budget_ms": budget, "target_rps": target, **advice.as_dict()})
