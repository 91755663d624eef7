"""Web UI routes of deployments."""

from django.urls import path, re_path

from deployments import traffic_views, views
from deployments.webhooks import views as webhook_views

app_name = "deployments"

urlpatterns = [
    path("deployments/", views.deployment_list, name="list"),
    path("webhooks/", webhook_views.webhook_list, name="webhooks"),
    path("webhooks/<int:webhook_id>/", webhook_views.webhook_detail, name="webhook-detail"),
    path("webhooks/<int:webhook_id>/ping/", webhook_views.webhook_ping, name="webhook-ping"),
    path("webhooks/<int:webhook_id>/delete/", webhook_views.webhook_delete, name="webhook-delete"),
    path(
        "webhooks/<int:webhook_id>/deliveries/<int:delivery_id>/redeliver/",
        webhook_views.webhook_redeliver,
        name="webhook-redeliver",
    ),
    path("models/<slug:name>/versions/<int:number>/deploy/", views.deployment_create, name="create"),
    path("deployments/<slug:name>/", views.deployment_detail, name="detail"),
    path("deployments/<slug:name>/live/", views.deployment_workers_fragment, name="live"),
    path("deployments/<slug:name>/stop/", views.deployment_stop, name="stop"),
    path("deployments/<slug:name>/start/", views.deployment_start, name="start"),
    path("deployments/<slug:name>/delete/", views.deployment_delete, name="delete"),
    path("deployments/<slug:name>/variants/", views.variant_add, name="variant-add"),
    path("deployments/<slug:name>/variants/<slug:variant>/scale/", views.variant_scale, name="variant-scale"),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/autoscaling/",
        views.variant_autoscaling,
        name="variant-autoscaling",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/version/",
        views.variant_version,
        name="variant-version",
    ),
    path(
        "deployments/<slug:name>/variants/<slug:variant>/rebuild-image/",
        views.variant_rebuild_image,
        name="variant-rebuild-image",
    ),
    path("deployments/<slug:name>/workers/<int:worker_id>/logs/", views.worker_logs, name="worker-logs"),
    path("deployments/<slug:name>/traffic/", traffic_views.set_split, name="traffic"),
    path(
        "deployments/<slug:name>/traffic/<int:change_id>/restore/",
        traffic_views.restore,
        name="traffic-restore",
    ),
    path("deployments/<slug:name>/variants/<slug:variant>/promote/", traffic_views.promote, name="promote"),
    path("deployments/<slug:name>/variants/<slug:variant>/shadow/", traffic_views.shadow, name="shadow"),
    path("deployments/<slug:name>/rollouts/", traffic_views.start_rollout, name="rollout-start"),
    re_path(
        r"^deployments/(?P<name>[a-z0-9-]+)/rollouts/(?P<rollout_id>[0-9]+)/(?P<command>pause|resume|abort)/$",
        traffic_views.control_rollout,
        name="rollout-control",
    ),
]
