"""Django admin for the registry. Changes go through the same services as the API and UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from config.admin_lists import LargeTableAdmin
from config.errors import PlatformError
from registry import services
from registry.forms import UploadForm
from registry.models import Alias, AuditEvent, ModelVersion, RegisteredModel
from registry.permissions import ensure_can_change
from registry.uploads import HashedTempUploadedFile


class AliasInline(admin.TabularInline[Alias, RegisteredModel]):
    model = Alias
    extra = 0
    fields = ("name", "version", "updated_by", "updated_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(LargeTableAdmin[RegisteredModel]):
    list_display = ("name", "owner", "team", "latest_version", "created_at")
    list_filter = ("team",)
    list_select_related = ("owner", "team")
    search_fields = ("name", "description", "owner__username")
    autocomplete_fields = ("owner", "team")
    readonly_fields = ("latest_version", "created_at", "updated_at")
    inlines = (AliasInline,)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # versions are an audit trail; archive by description instead


class AdminUploadForm(UploadForm):
    model = forms.ModelChoiceField(
        queryset=RegisteredModel.objects.order_by("name"),
        to_field_name="name",
        widget=forms.TextInput(attrs={"placeholder": "model name"}),
        help_text="the model's name (a select of every model would not scale)",
    )
    field_order = ("model", "file", "signature", "class_labels", "description", "git_commit", "ci_run_url")


class AliasActionForm(forms.Form):
    alias = forms.SlugField(max_length=64, initial="production")


@admin.register(ModelVersion)
class ModelVersionAdmin(LargeTableAdmin[ModelVersion]):
    list_display = ("__str__", "status", "source_format", "source_size", "created_by", "created_at")
    list_filter = ("status", "source_format")
    search_fields = ("model__name", "source_sha256", "onnx_sha256")
    list_select_related = ("model", "created_by")
    ordering = ("-pk",)
    readonly_fields = [f.name for f in ModelVersion._meta.fields]
    actions = ("set_alias_action", "convert_again_action")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        """Upload through the registration service (the default add form would skip its checks)."""
        form = AdminUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and getattr(request, "upload_too_large", False):
            form.add_error(None, "the file is larger than the upload limit")
        elif request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                ensure_can_change(request.user, form.cleaned_data["model"])
                if not isinstance(upload, HashedTempUploadedFile):
                    raise PlatformError("file: upload the artifact as a file")
                version = services.register_version(
                    model=form.cleaned_data["model"],
                    upload_path=Path(upload.temporary_file_path()),
                    actor=request.user,  # type: ignore[arg-type]
                    signature=form.cleaned_data["signature"],
                    description=form.cleaned_data["description"],
                    metadata={**form.metadata(), "source": "admin"},
                    class_labels=form.cleaned_data["class_labels"],
                ).version
            except PlatformError as exc:
                form.add_error(None, exc.message)
            else:
                self.message_user(request, f"Registered {version}; conversion queued.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:registry_modelversion_change", args=[version.pk]))
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": "Upload a model version",
        }
        return TemplateResponse(request, "admin/registry/upload.html", context)

    @admin.action(description="Set an alias on the selected version")
    def set_alias_action(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to point an alias at.", messages.ERROR)
            return None
        version = queryset.select_related("model").get()
        form = AliasActionForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                ensure_can_change(request.user, version.model)
                services.set_alias(
                    model=version.model,
                    name=form.cleaned_data["alias"],
                    version_number=version.version,
                    actor=request.user,
                )
            except PlatformError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"{form.cleaned_data['alias']} now points at {version}.")
            return None
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "version": version,
            "opts": self.model._meta,
            "title": f"Set an alias on {version}",
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/registry/set_alias.html", context)

    @admin.action(description="Convert the selected versions again")
    def convert_again_action(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        for version in queryset.select_related("model"):
            try:
                ensure_can_change(request.user, version.model)
                services.request_conversion(version=version, actor=request.user)
            except PlatformError as exc:
                self.message_user(request, f"{version}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{version}: conversion queued.")


@admin.register(Alias)
class AliasAdmin(LargeTableAdmin[Alias]):
    list_display = ("model", "name", "version", "updated_by", "updated_at")
    list_filter = ("name",)
    search_fields = ("model__name", "name")
    list_select_related = ("model", "version__model", "updated_by")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # use the "Set an alias" action on a version: it validates and audits

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Alias) -> None:
        services.delete_alias(model=obj.model, name=obj.name, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Alias]) -> None:
        for alias in queryset.select_related("model"):
            services.delete_alias(model=alias.model, name=alias.name, actor=request.user)


@admin.register(AuditEvent)
class AuditEventAdmin(LargeTableAdmin[AuditEvent]):
    list_display = ("created_at", "actor_label", "action", "subject", "reason")
    list_filter = ("action", "created_at")
    search_fields = ("=actor_label", "^subject")
    ordering = ("-pk",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
