"""Web pages of webhooks: the subscriptions you manage, a new one, its delivery log (through services)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from config.errors import PlatformError
from deployments.webhooks import services
from deployments.webhooks.events import EVENT_CHOICES
from deployments.webhooks.models import WebhookDelivery
from registry.models import RegisteredModel

GLOBAL = ""


class WebhookForm(forms.Form):
    url = forms.CharField(max_length=2000, label="URL", help_text="http(s), at a public address")
    event_types = forms.MultipleChoiceField(
        choices=[(e, e) for e in EVENT_CHOICES], widget=forms.CheckboxSelectMultiple, label="Events"
    )
    model = forms.ChoiceField(required=False, help_text="whose events; every model: staff only")
    secret = forms.CharField(
        required=False, min_length=16, max_length=200, help_text="left empty: one is generated and shown once"
    )
    description = forms.CharField(required=False, max_length=200)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = [m.name for m in RegisteredModel.objects.order_by("name") if m.can_change(user)]
        choices = [(GLOBAL, "every model")] if user.is_staff else []
        self.fields["model"].choices = choices + [(n, n) for n in names]  # type: ignore[attr-defined]

    def spec(self) -> services.WebhookSpec:
        name = self.cleaned_data["model"]
        return services.WebhookSpec(
            url=self.cleaned_data["url"],
            secret=self.cleaned_data["secret"] or services.new_secret(),
            event_types=tuple(self.cleaned_data["event_types"]),
            model=RegisteredModel.objects.get(name=name) if name else None,
            description=self.cleaned_data["description"],
        )


@login_required
def webhook_list(request: HttpRequest) -> HttpResponse:
    form = WebhookForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            webhook = services.create_webhook(spec=form.spec(), actor=request.user)
        except PlatformError as exc:
            form.add_error("url" if exc.extra.get("field") == "url" else None, exc.message)
        else:
            messages.success(request, f"Webhook created. Its secret, shown this once: {webhook.secret}")
            return redirect("deployments:webhook-detail", webhook_id=webhook.pk)
    return render(
        request, "deployments/webhooks.html", {"webhooks": services.webhooks_for(request.user), "form": form}
    )


@login_required
def webhook_detail(request: HttpRequest, webhook_id: int) -> HttpResponse:
    webhook = services.get_webhook(webhook_id, request.user)
    deliveries = WebhookDelivery.objects.filter(webhook=webhook).order_by("-created_at", "-id")[:100]
    return render(request, "deployments/webhook_detail.html", {"webhook": webhook, "deliveries": deliveries})


@login_required
@require_POST
def webhook_ping(request: HttpRequest, webhook_id: int) -> HttpResponse:
    webhook = services.get_webhook(webhook_id, request.user)
    services.ping_webhook(webhook=webhook, actor=request.user)
    messages.success(request, "Ping queued.")
    return redirect("deployments:webhook-detail", webhook_id=webhook.pk)


@login_required
@require_POST
def webhook_redeliver(request: HttpRequest, webhook_id: int, delivery_id: int) -> HttpResponse:
    webhook = services.get_webhook(webhook_id, request.user)
    again = services.redeliver(delivery=services.get_delivery(webhook, delivery_id), actor=request.user)
    messages.success(request, f"Delivery {delivery_id} queued again as {again.pk}.")
    return redirect("deployments:webhook-detail", webhook_id=webhook.pk)


@login_required
@require_POST
def webhook_delete(request: HttpRequest, webhook_id: int) -> HttpResponse:
    webhook = services.get_webhook(webhook_id, request.user)
    services.delete_webhook(webhook=webhook, actor=request.user)
    messages.success(request, "Webhook removed.")
    return redirect("deployments:webhooks")
