"""The metrics dashboard (staff only): overview, per-deployment charts, and their JSON feeds."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, user_passes_test
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import PlatformError
from config.query import read_query
from dashboard import serializers as ds
from dashboard.advice import advise
from deployments import queries, series
from deployments.models import Rollout
from deployments.services import measurements
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

    @extend_schema(parameters=[ds.OverviewQuery], responses=ds.OverviewOutput)
    def get(self, request: Request) -> Response:
        window = int(min(max(read_query(request, ds.OverviewQuery)["window_s"], 10), 3600))
        rows = series.overview(window_s=window)
        return Response(ds.OverviewOutput({"window_s": window, "deployments": rows}).data)


class SeriesApi(APIView):
    """Time series of one deployment per variant and worker over 15m, 1h, 24h or 7d."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        parameters=[ds.SeriesQuery],
        responses={
            200: ds.SeriesOutput,
            304: OpenApiResponse(description="Not modified: the ETag sent in If-None-Match is current."),
        },
    )
    def get(self, request: Request, name: str) -> Response:
        """Answers 304 to ``If-None-Match`` while nothing the series shows has changed."""
        deployment = queries.get_deployment(name)
        range_name = read_query(request, ds.SeriesQuery)["range"]
        now = timezone.now()
        etag = series.series_etag(deployment, range_name, now=now)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if etag in request.headers.get("If-None-Match", ""):
            return Response(status=304, headers=headers)
        chart = series.deployment_series(deployment, range_name, now=now)
        return Response(ds.SeriesOutput(chart).data, headers=headers)


class VersionLiveApi(APIView):
    """Live numbers of the deployments serving one version (staff only, like the dashboard)."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses=ds.VersionLiveOutput)
    def get(self, request: Request, name: str, number: int) -> Response:
        version = registry_queries.get_version(name, number)
        serving = series.version_numbers(version.pk)
        return Response(ds.VersionLiveOutput({"version": version.version, "serving": serving}).data)


class AdviceApi(APIView):
    """Batch size, queue delay, instances and protocol meeting a latency budget and throughput target."""

    permission_classes = [IsAuthenticated]

    @extend_schema(parameters=[ds.AdviceQuery], responses=ds.AdviceOutput)
    def get(self, request: Request, name: str, number: int) -> Response:
        version = registry_queries.get_version(name, number)
        params = read_query(request, ds.AdviceQuery)
        budget, target = params["latency_budget_ms"], params["target_rps"]
        cells = measurements.measured_cells(version)
        advice = advise(version.report or {}, budget_ms=budget, target_rps=target, measured=cells)
        body = {"latency_budget_ms": budget, "target_rps": target, **advice.as_dict()}
        body["cold_start_s"] = queries.cold_start_s(version.id)
        body["measurement"] = measurements.latest_run(version)
        return Response(ds.AdviceOutput(body).data)


class MeasurementsApi(APIView):
    """A version's serving measurements: the latest run and every measured cell; POST starts a run.

    A run starts the real inference worker on the platform's machine with each batching the
    platform's rule can propose at the budget and loads it; the serving advice then quotes it.
    """

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=ds.MeasurementsOutput)
    def get(self, request: Request, name: str, number: int) -> Response:
        version = registry_queries.get_version(name, number)
        body = {"run": measurements.latest_run(version), "rows": measurements.measured_cells(version)}
        return Response(ds.MeasurementsOutput(body).data)

    @extend_schema(request=ds.MeasurementInput, responses={202: ds.MeasurementRunOutput})
    def post(self, request: Request, name: str, number: int) -> Response:
        version = registry_queries.version_for_change(name, number, request.user)
        data = ds.MeasurementInput(data=request.data)
        data.is_valid(raise_exception=True)
        budget = data.validated_data.get("latency_budget_ms", settings.KILN_LATENCY_BUDGET_MS)
        run = measurements.request_measurement(version=version, latency_budget_ms=budget, actor=request.user)
        return Response(ds.MeasurementRunOutput(run).data, status=202)


@login_required
@require_POST
def version_measure(request: HttpRequest, name: str, number: int) -> HttpResponse:
    """The version page's "Measure on this machine" button."""
    version = registry_queries.version_for_change(name, number, request.user)
    form = ds.MeasurementInput(data=request.POST)
    if not form.is_valid():
        problems = [str(error) for errors in form.errors.values() for error in errors]
        messages.error(request, f"Latency budget: {'; '.join(problems)}")
        return redirect("registry:version-detail", name=name, number=number)
    budget = form.validated_data.get("latency_budget_ms", settings.KILN_LATENCY_BUDGET_MS)
    try:
        measurements.request_measurement(version=version, latency_budget_ms=budget, actor=request.user)
    except PlatformError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Measurement queued: the serving advice quotes it once it is done.")
    return redirect("registry:version-detail", name=name, number=number)
