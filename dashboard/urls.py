"""Dashboard pages."""

from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("dashboard/", views.overview_page, name="overview"),
    path("dashboard/deployments/<slug:name>/", views.deployment_page, name="deployment"),
]
