"""The observability app's routes under /api/v1/."""

from django.urls import path

from observability import api

urlpatterns = [
    path("prometheus/targets/", api.PrometheusTargetsView.as_view(), name="prometheus-targets"),
]
