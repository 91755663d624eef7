"""Dashboard pages."""

from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("dashboard/", views.overview_page, name="overview"),
    path("dashboard/deployments/<slug:name>/", views.deployment_page, name="deployment"),
    path("models/<slug:name>/versions/<int:number>/measure/", views.version_measure, name="version-measure"),
]
