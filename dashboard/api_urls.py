"""Dashboard JSON feeds under /api/v1/."""

from django.urls import path

from dashboard import views

urlpatterns = [
    path("dashboard/overview/", views.OverviewApi.as_view(), name="dashboard-overview"),
    path("dashboard/deployments/<slug:name>/series/", views.SeriesApi.as_view(), name="dashboard-series"),
    path(
        "models/<slug:name>/versions/<int:number>/live/", views.VersionLiveApi.as_view(), name="version-live"
    ),
    path(
        "models/<slug:name>/versions/<int:number>/advice/", views.AdviceApi.as_view(), name="version-advice"
    ),
    path(
        "models/<slug:name>/versions/<int:number>/measurements/",
        views.MeasurementsApi.as_view(),
        name="version-measurements",
    ),
]
