"""The /api/v1/ router: every app's API routes under one versioned prefix."""

from django.urls import include, path

app_name = "api"

urlpatterns = [
    path("", include("registry.api.urls")),
    path("", include("deployments.api.urls")),
    path("", include("deployments.webhooks.urls")),
    path("", include("dashboard.api_urls")),
    path("", include("observability.api_urls")),
]
