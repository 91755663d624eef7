"""Django admin for webhook subscriptions and their delivery log (changes go through the services)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.errors import PlatformError
from deployments.webhooks import services
from deployments.webhooks.events import EVENT_CHOICES
from deployments.webhooks.models import Webhook, WebhookDelivery
from deployments.webhooks.targets import check_url


class WebhookForm(forms.ModelForm[Webhook]):
    url = forms.CharField(max_length=2000, help_text="checked like the API's: public addresses only")
    event_types = forms.MultipleChoiceField(
        choices=[(e, e) for e in EVENT_CHOICES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = Webhook
        fields = ("url", "secret", "event_types", "model", "description", "active")
        widgets = {"secret": forms.PasswordInput(render_value=True)}

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        try:
            check_url(url)
        except PlatformError as exc:
            raise forms.ValidationError(exc.message) from exc
        return url


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin[Webhook]):
    form = WebhookForm
    list_display = ("id", "url", "model", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("url", "description")
    actions = ("ping",)

    def save_model(self, request: HttpRequest, obj: Webhook, form: Any, change: bool) -> None:
        """Through the service: the URL check (SSRF) and the event names apply here too."""
        spec = services.WebhookSpec(
            url=obj.url,
            secret=obj.secret,
            event_types=tuple(form.cleaned_data["event_types"]),
            model=obj.model,
            description=obj.description,
            active=obj.active,
        )
        try:
            if change:
                saved = services.update_webhook(
                    webhook=Webhook.objects.get(pk=obj.pk), spec=spec, actor=request.user
                )
            else:
                saved = services.create_webhook(spec=spec, actor=request.user)
        except PlatformError as exc:
            messages.error(request, exc.message)
            return
        obj.pk = saved.pk

    @admin.action(description="Send a ping")
    def ping(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        for webhook in queryset:
            services.ping_webhook(webhook=webhook, actor=request.user)
        messages.success(request, f"ping queued to {queryset.count()} webhook(s)")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    list_display = ("id", "webhook", "event_type", "status", "attempts", "last_status_code", "next_retry_at")
    list_filter = ("status", "event_type")
    readonly_fields = tuple(f.name for f in WebhookDelivery._meta.fields)
    actions = ("redeliver",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Redeliver")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset.select_related("webhook__model"):
            services.redeliver(delivery=delivery, actor=request.user)
        messages.success(request, f"{queryset.count()} delivery(ies) queued again")
