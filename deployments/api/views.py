"""Deployments API: reads through a viewset, every workflow an explicit action calling one service."""

from __future__ import annotations

import json
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import PayloadTooLargeError, PlatformError
from deployments import queries, services
from deployments.api import serializers as s
from deployments.backends import get_backend
from deployments.errors import WorkerAuthError
from deployments.models import Deployment, Worker
from deployments.services.images import rebuild_worker_image
from registry import queries as registry_queries


class DeploymentViewSet(mixins.ListModelMixin, viewsets.GenericViewSet[Deployment]):
    """Deployments: create, list, read, stop, start, delete; variants: add, scale, change version."""

    serializer_class = s.DeploymentOutput
    lookup_field = "name"
    lookup_value_regex = "[a-z0-9-]+"

    def get_queryset(self) -> QuerySet[Deployment]:
        queryset = queries.deployments().order_by("name")
        if model := self.request.query_params.get("model"):
            queryset = queryset.filter(model__name=model)
        if state := self.request.query_params.get("status"):
            queryset = queryset.filter(status=state)
        return queryset

    @extend_schema(parameters=[OpenApiParameter("model", str), OpenApiParameter("status", str)])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.DeploymentCreateInput, responses={201: s.DeploymentOutput})
    def create(self, request: Request) -> Response:
        data = s.DeploymentCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        model = registry_queries.model_for_change(data.validated_data["model"], request.user)
        deployment = services.create_deployment(
            name=data.validated_data["name"],
            model=model,
            variants=data.specs(),
            actor=request.user,  # type: ignore[arg-type]
            description=data.validated_data["description"],
            latency_budget_ms=data.validated_data.get("latency_budget_ms"),
            on_alias_move=data.validated_data["on_alias_move"],
        )
        return Response(s.DeploymentOutput(queries.get_deployment(deployment.name)).data, status=201)

    def retrieve(self, request: Request, name: str) -> Response:
        return Response(s.DeploymentOutput(queries.get_deployment(name)).data)

    @extend_schema(responses={202: s.DeploymentOutput})
    def destroy(self, request: Request, name: str) -> Response:
        """Accepted: the deployment leaves the gateway now; its workers drain, then it is gone (404)."""
        deployment = queries.deployment_for_change(name, request.user, deleting_ok=True)
        services.delete_deployment(deployment=deployment, actor=request.user)
        return Response(s.DeploymentOutput(queries.get_deployment(name)).data, status=202)

    @extend_schema(request=s.AliasMovePolicyInput, responses=s.DeploymentOutput)
    @action(detail=True, methods=["put"], url_path="on-alias-move")
    def on_alias_move(self, request: Request, name: str) -> Response:
        """What happens when the alias of a variant carrying traffic moves."""
        deployment = queries.deployment_for_change(name, request.user)
        data = s.AliasMovePolicyInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.set_alias_move_policy(
            deployment=deployment, policy=data.validated_data["on_alias_move"], actor=request.user
        )
        return Response(s.DeploymentOutput(queries.get_deployment(name)).data)

    @extend_schema(request=None, responses=s.DeploymentOutput)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, name: str) -> Response:
        return self._set_running(request, name, running=False)

    @extend_schema(request=None, responses=s.DeploymentOutput)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, name: str) -> Response:
        return self._set_running(request, name, running=True)

    def _set_running(self, request: Request, name: str, *, running: bool) -> Response:
        deployment = queries.deployment_for_change(name, request.user)
        services.set_deployment_running(deployment=deployment, running=running, actor=request.user)
        return Response(s.DeploymentOutput(queries.get_deployment(name)).data, status=202)


class VariantListView(APIView):
    """Add a variant (at weight 0) to a deployment."""

    @extend_schema(request=s.VariantInput, responses={201: s.VariantOutput})
    def post(self, request: Request, name: str) -> Response:
        deployment = queries.deployment_for_change(name, request.user)
        data = s.VariantInput(data=request.data)
        data.is_valid(raise_exception=True)
        variant = services.add_variant(deployment=deployment, spec=data.spec(), actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant.name)).data, status=201)


class VariantDetailView(APIView):
    """Read or remove one variant."""

    @extend_schema(responses=s.VariantOutput)
    def get(self, request: Request, name: str, variant: str) -> Response:
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data)

    @extend_schema(responses={202: s.VariantOutput})
    def delete(self, request: Request, name: str, variant: str) -> Response:
        """Accepted: the variant's workers drain, then it is gone (404)."""
        row = queries.variant_for_change(name, variant, request.user, removing_ok=True)
        services.remove_variant(variant=row, actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data, status=202)


class ScaleView(APIView):
    """``POST {"replicas": n}``: scale a variant."""

    @extend_schema(request=s.ScaleInput, responses=s.VariantOutput)
    def post(self, request: Request, name: str, variant: str) -> Response:
        row = queries.variant_for_change(name, variant, request.user)
        data = s.ScaleInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.scale_variant(variant=row, replicas=data.validated_data["replicas"], actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data, status=202)


class AutoscalingView(APIView):
    """``PUT`` a variant's autoscaling policy (options left out keep their value); ``DELETE`` it."""

    @extend_schema(request=s.AutoscalingInput, responses={202: s.VariantOutput})
    def put(self, request: Request, name: str, variant: str) -> Response:
        row = queries.variant_for_change(name, variant, request.user)
        data = s.AutoscalingInput(data=request.data)
        data.is_valid(raise_exception=True)
        policy = data.policy(base=services.policy_of(row))
        services.set_autoscaling(variant=row, policy=policy, actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data, status=202)

    @extend_schema(request=None, responses={202: s.VariantOutput})
    def delete(self, request: Request, name: str, variant: str) -> Response:
        """Back to a fixed replica count: the one running now."""
        row = queries.variant_for_change(name, variant, request.user)
        services.remove_autoscaling(variant=row, actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data, status=202)


class VersionView(APIView):
    """``PUT {"version": n}`` or ``{"alias": name}``: roll a variant to another version."""

    @extend_schema(request=s.VersionInput, responses=s.VariantOutput)
    def put(self, request: Request, name: str, variant: str) -> Response:
        row = queries.variant_for_change(name, variant, request.user)
        data = s.VersionInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.set_variant_version(variant=row, target=data.target(), actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data, status=202)


class BatchingView(APIView):
    """``PUT`` batching options of a variant (workers are replaced with the new options)."""

    @extend_schema(request=s.BatchingInput, responses=s.VariantOutput)
    def put(self, request: Request, name: str, variant: str) -> Response:
        row = queries.variant_for_change(name, variant, request.user)
        data = s.BatchingInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.update_batching(variant=row, batching=dict(data.validated_data), actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data, status=202)


class RebuildImageView(APIView):
    """``POST``: build a variant's failed worker image again (docker backend)."""

    @extend_schema(request=None, responses=s.VariantOutput)
    def post(self, request: Request, name: str, variant: str) -> Response:
        row = queries.variant_for_change(name, variant, request.user)
        rebuild_worker_image(variant=row, actor=request.user)
        return Response(s.VariantOutput(queries.get_variant(name, variant)).data, status=202)


class WorkerLogsView(APIView):
    """The last lines a worker printed."""

    @extend_schema(parameters=[OpenApiParameter("tail", int)], responses={200: dict})
    def get(self, request: Request, name: str, worker_id: int) -> Response:
        worker = Worker.objects.filter(pk=worker_id, variant__deployment__name=name).first()
        if worker is None:
            raise PlatformError(f"deployment {name!r} has no worker {worker_id}", code="not_found")
        tail = min(max(int(request.query_params.get("tail", "200") or 200), 1), 2000)
        text = (
            get_backend(worker.backend).logs(worker.handle, log_path=worker.log_path, tail=tail)
            if worker.handle
            else ""
        )
        return Response({"worker": worker.pk, "state": worker.state, "lines": text.splitlines()})


class ReportView(APIView):
    """``POST /api/v1/workers/{id}/reports/``: a worker pushes its report with its own token."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(request=dict, responses={202: dict})
    def post(self, request: Request, worker_id: int) -> Response:
        worker = services.authenticate_worker(worker_id=worker_id, token=_bearer(request))
        report = services.ingest_report(worker=worker, payload=_report_payload(request))
        return Response({"accepted": True, "report": report.pk}, status=202)


class TaskReportView(APIView):
    """``POST /api/v1/tasks/{task id}/reports/``: a swarm task's worker reports with its service's token."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(request=dict, responses={202: dict})
    def post(self, request: Request, task_id: str) -> Response:
        worker = services.authenticate_task(handle=task_id, token=_bearer(request))
        report = services.ingest_report(worker=worker, payload=_report_payload(request))
        return Response({"accepted": True, "report": report.pk}, status=202)


def _bearer(request: Request) -> str:
    header = str(request.META.get("HTTP_AUTHORIZATION", ""))
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise WorkerAuthError("send the worker's report token as 'Authorization: Bearer <token>'")
    return token.strip()


def _report_payload(request: Request) -> dict[str, Any]:
    from django.conf import settings

    body = request.body
    if len(body) > settings.KILN_MAX_REPORT_BYTES:
        raise PayloadTooLargeError(f"report larger than {settings.KILN_MAX_REPORT_BYTES} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise PlatformError("report: not valid JSON") from None
    if not isinstance(payload, dict):
        raise PlatformError("report: must be a JSON object")
    return payload
