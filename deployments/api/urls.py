"""Deployment routes under /api/v1/."""

from django.urls import path

from deployments.api import views

deployment_list = views.DeploymentViewSet.as_view({"get": "list", "post": "create"})
deployment_detail = views.DeploymentViewSet.as_view({"get": "retrieve", "delete": "destroy"})

urlpatterns = [
    path("deployments/", deployment_list, name="deployment-list"),
    path("deployments/<slug:name>/", deployment_detail, name="deployment-detail"),
    path(
        "deployments/<slug:name>/stop/",
        views.DeploymentViewSet.as_view({"post": "stop"}),
        name="deployment-stop",
    ),
    path(
        "deployments/<slug:name>/start/",
        views.DeploymentViewSet.as_view({"post": "start"}),
        name="deployment-start",
    ),
    path("deployments/<slug:name>/variants/", views.VariantListView.as_view(), name="variant-list"),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/",
        views.VariantDetailView.as_view(),
        name="variant-detail",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/scale/",
        views.ScaleView.as_view(),
        name="variant-scale",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/version/",
        views.VersionView.as_view(),
        name="variant-version",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/batching/",
        views.BatchingView.as_view(),
        name="variant-batching",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/rebuild-image/",
        views.RebuildImageView.as_view(),
        name="variant-rebuild-image",
    ),
    path(
        "deployments/<slug:name>/workers/<int:worker_id>/logs/",
        views.WorkerLogsView.as_view(),
        name="worker-logs",
    ),
    path("workers/<int:worker_id>/reports/", views.ReportView.as_view(), name="worker-reports"),
    path("prometheus/targets/", views.PrometheusTargetsView.as_view(), name="prometheus-targets"),
]
