"""Deployment routes under /api/v1/."""

from django.urls import path, re_path

from deployments.api import traffic_views, views

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
    path(
        "deployments/<slug:name>/on-alias-move/",
        views.DeploymentViewSet.as_view({"put": "on_alias_move"}),
        name="deployment-on-alias-move",
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
        "deployments/<slug:name>/variants/<slug:variant>/autoscaling/",
        views.AutoscalingView.as_view(),
        name="variant-autoscaling",
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
    path("deployments/<slug:name>/traffic/", traffic_views.TrafficView.as_view(), name="traffic"),
    path(
        "deployments/<slug:name>/traffic/history/<int:change_id>/restore/",
        traffic_views.RestoreView.as_view(),
        name="traffic-restore",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/promote/",
        traffic_views.PromoteView.as_view(),
        name="variant-promote",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/shadow/",
        traffic_views.ShadowView.as_view(),
        name="variant-shadow",
    ),
    path("deployments/<slug:name>/rollouts/", traffic_views.RolloutListView.as_view(), name="rollout-list"),
    path(
        "deployments/<slug:name>/rollouts/<int:rollout_id>/",
        traffic_views.RolloutDetailView.as_view(),
        name="rollout-detail",
    ),
    re_path(
        r"^deployments/(?P<name>[a-z0-9-]+)/rollouts/(?P<rollout_id>[0-9]+)/(?P<command>pause|resume|abort)/$",
        traffic_views.RolloutControlView.as_view(),
        name="rollout-control",
    ),
    path("workers/<int:worker_id>/reports/", views.ReportView.as_view(), name="worker-reports"),
    re_path(
        r"^tasks/(?P<task_id>[a-z0-9]{1,64})/reports/$", views.TaskReportView.as_view(), name="task-reports"
    ),
]
