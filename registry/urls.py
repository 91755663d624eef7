"""Web UI routes of the registry."""

from django.urls import path

from registry import views

app_name = "registry"

urlpatterns = [
    path("", views.model_list, name="model-list"),
    path("models/new/", views.model_create, name="model-create"),
    path("models/<slug:name>/", views.model_detail, name="model-detail"),
    path("models/<slug:name>/delete/", views.model_delete, name="model-delete"),
    path("models/<slug:name>/upload/", views.version_upload, name="version-upload"),
    path("models/<slug:name>/aliases/", views.alias_set, name="alias-set"),
    path("models/<slug:name>/aliases/<slug:alias>/delete/", views.alias_delete, name="alias-delete"),
    path("models/<slug:name>/versions/<int:number>/", views.version_detail, name="version-detail"),
    path("models/<slug:name>/versions/<int:number>/convert/", views.version_convert, name="version-convert"),
    path("models/<slug:name>/versions/<int:number>/delete/", views.version_delete, name="version-delete"),
    path("models/<slug:name>/versions/<int:number>/labels/", views.version_labels, name="version-labels"),
    path("audit/", views.audit_list, name="audit-list"),
]
