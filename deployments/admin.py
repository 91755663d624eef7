"""Django admin for deployments. Changes go through the services (validation, audit, reconcile)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.admin_lists import LargeTableAdmin
from config.errors import PlatformError
from deployments import services
from deployments.autoscaling.models import ScalingDecision, ScalingPolicy
from deployments.autoscaling.table import AUTOSCALING
from deployments.errors import InvalidDeploymentError
from deployments.inputs import AutoscalingPolicy
from deployments.models import Deployment, Report, Variant, Worker, WorkerImage
from deployments.webhooks import admin as webhook_admin  # noqa: F401 - registers the webhook models
from registry.permissions import ensure_can_change


class VariantInline(admin.TabularInline[Variant, Deployment]):
    model = Variant
    extra = 0
    fields = (
        "name",
        "version",
        "alias",
        "weight",
        "shadow_percent",
        "replicas",
        "gpu_ids",
        "backend",
        "placement_constraints",
        "placement_spread",
    )
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin[Deployment]):
    list_display = ("name", "model", "status", "desired_running", "updated_at")
    list_filter = ("status", "desired_running")
    search_fields = ("name", "model__name", "description")
    readonly_fields = [f.name for f in Deployment._meta.fields]
    inlines = (VariantInline,)
    actions = ("stop_action", "start_action")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # deploy from a version page or the API: the service validates and proposes batching

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _run(self, request: HttpRequest, queryset: QuerySet[Deployment], running: bool) -> None:
        for deployment in queryset.select_related("model"):
            try:
                ensure_can_change(request.user, deployment.model)
                services.set_deployment_running(deployment=deployment, running=running, actor=request.user)
            except PlatformError as exc:
                self.message_user(request, f"{deployment}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{deployment}: {'starting' if running else 'stopping'}.")

    @admin.action(description="Stop the selected deployments")
    def stop_action(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        self._run(request, queryset, running=False)

    @admin.action(description="Start the selected deployments")
    def start_action(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        self._run(request, queryset, running=True)


@admin.register(Variant)
class VariantAdmin(admin.ModelAdmin[Variant]):
    list_display = ("__str__", "version", "alias", "weight", "shadow_percent", "replicas", "backend")
    list_filter = ("backend", "deployment")
    search_fields = ("deployment__name", "name")
    list_select_related = ("deployment", "version__model")
    readonly_fields = [f.name for f in Variant._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin[Worker]):
    list_display = ("id", "variant", "state", "version", "node", "http_url", "restarts", "last_heartbeat")
    list_filter = ("state", "backend", "node")
    search_fields = ("variant__deployment__name", "handle", "http_url", "node")
    list_select_related = ("variant__deployment", "version__model")
    readonly_fields = [f.name for f in Worker._meta.fields if f.name != "token_digest"]
    exclude = ("token_digest",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Report)
class ReportAdmin(LargeTableAdmin[Report]):
    list_display = (
        "end",
        "deployment",
        "variant",
        "worker",
        "resolution",
        "requests",
        "errors",
        "latency_p99_ms",
    )
    list_filter = ("resolution", "deployment")
    list_select_related = ("deployment", "variant", "worker")
    ordering = ("-end",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WorkerImage)
class WorkerImageAdmin(admin.ModelAdmin[WorkerImage]):
    """Read-only: images are built by the platform (rebuild a failed one from the deployment page)."""

    list_display = ("tag", "status", "progress", "flavour", "reused", "created_at", "finished_at")
    list_filter = ("status", "flavour", "reused")
    search_fields = ("tag", "version__model__name", "worker_code_hash")
    readonly_fields = [f.name for f in WorkerImage._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ScalingPolicyForm(forms.ModelForm[ScalingPolicy]):
    """Checks the policy as the API does (the typed input), naming the field."""

    class Meta:
        model = ScalingPolicy
        fields = ("variant", *AUTOSCALING)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if all(name in cleaned for name in AUTOSCALING):
            try:
                self.policy = AutoscalingPolicy(**{name: cleaned[name] for name in AUTOSCALING})
            except InvalidDeploymentError as exc:
                field = exc.message.partition(":")[0]
                if field not in AUTOSCALING:
                    raise forms.ValidationError(exc.message) from None
                raise forms.ValidationError({field: exc.message}) from None
        return cleaned


@admin.register(ScalingPolicy)
class ScalingPolicyAdmin(admin.ModelAdmin[ScalingPolicy]):
    """Changes go through the autoscaling service: replicas move into the bounds, the change is audited."""

    form = ScalingPolicyForm
    list_display = ("variant", *AUTOSCALING, "last_scaled_at", "last_active_at")
    list_select_related = ("variant__deployment",)
    readonly_fields = ("last_scaled_at", "last_active_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "variant") if obj is not None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ScalingPolicy, form: Any, change: bool) -> None:
        variant = Variant.objects.select_related("deployment__model").get(pk=obj.variant_id)
        try:
            ensure_can_change(request.user, variant.deployment.model)
            services.set_autoscaling(variant=variant, policy=form.policy, actor=request.user)
        except PlatformError as exc:
            self.message_user(request, f"{variant}: {exc.message}", messages.ERROR)
        obj.pk = ScalingPolicy.objects.filter(variant=variant).values_list("pk", flat=True).first()

    def delete_model(self, request: HttpRequest, obj: ScalingPolicy) -> None:
        services.remove_autoscaling(variant=obj.variant, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ScalingPolicy]) -> None:
        for policy in queryset.select_related("variant"):
            self.delete_model(request, policy)


@admin.register(ScalingDecision)
class ScalingDecisionAdmin(admin.ModelAdmin[ScalingDecision]):
    """Read-only: what the autoscaler decided and what it saw."""

    list_display = (
        "created_at",
        "variant",
        "from_replicas",
        "to_replicas",
        "reason",
        "short_load",
        "long_load",
    )
    list_filter = ("reason",)
    list_select_related = ("variant__deployment",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
