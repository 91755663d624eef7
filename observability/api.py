"""Prometheus HTTP service discovery: where every worker's /metrics is, with its labels."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from deployments.models import Worker, WorkerState


class TargetGroupOutput(serializers.Serializer[Any]):
    """One target group of Prometheus' HTTP service discovery format."""

    targets = serializers.ListField(child=serializers.CharField(), help_text="host:port of one worker")
    labels = serializers.DictField(
        child=serializers.CharField(),
        help_text="deployment, variant, version, model, worker and __metrics_path__",
    )


class PrometheusTargetsView(APIView):
    """Prometheus HTTP service discovery: every ready worker's metrics address with labels."""

    @extend_schema(responses=TargetGroupOutput(many=True))
    def get(self, request: Request) -> Response:
        workers = (
            Worker.objects.filter(state__in=(WorkerState.READY, WorkerState.UNHEALTHY, WorkerState.DRAINING))
            .select_related("variant__deployment__model", "version")
            .order_by("id")
        )
        groups = []
        for worker in workers:
            address = worker.http_url.split("://", 1)[-1]
            groups.append(
                {
                    "targets": [address],
                    "labels": {
                        "deployment": worker.variant.deployment.name,
                        "variant": worker.variant.name,
                        "version": str(worker.version.version),
                        "model": worker.variant.deployment.model.name,
                        "worker": str(worker.pk),
                        "__metrics_path__": "/metrics",
                    },
                }
            )
        return Response(TargetGroupOutput(groups, many=True).data)
