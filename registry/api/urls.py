"""Registry routes under /api/v1/."""

from django.urls import path, re_path

from registry.api import views

model_list = views.ModelViewSet.as_view({"get": "list", "post": "create"})
model_detail = views.ModelViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})
version_list = views.VersionViewSet.as_view({"get": "list", "post": "create"})
version_detail = views.VersionViewSet.as_view(
    {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}
)
version_convert = views.VersionViewSet.as_view({"post": "convert"})
audit_list = views.AuditEventViewSet.as_view({"get": "list"})

urlpatterns = [
    path("models/", model_list, name="model-list"),
    path("models/<slug:name>/", model_detail, name="model-detail"),
    path("models/<slug:name>/versions/", version_list, name="version-list"),
    path("models/<slug:name>/versions/<int:number>/", version_detail, name="version-detail"),
    path("models/<slug:name>/versions/<int:number>/convert/", version_convert, name="version-convert"),
    re_path(
        r"^models/(?P<name>[a-z0-9-]+)/versions/(?P<number>[0-9]+)/artifacts/(?P<kind>source|onnx)/$",
        views.ArtifactDownloadView.as_view(),
        name="version-artifact",
    ),
    path("models/<slug:name>/aliases/", views.AliasListView.as_view(), name="alias-list"),
    path("models/<slug:name>/aliases/<slug:alias>/", views.AliasView.as_view(), name="alias-detail"),
    path("audit-events/", audit_list, name="audit-event-list"),
]
