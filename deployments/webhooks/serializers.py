"""Input and output serializers of the webhooks API."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from config.api_inputs import Input
from deployments.webhooks import services
from deployments.webhooks.events import EVENT_CHOICES
from deployments.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery
from deployments.webhooks.services import WebhookSpec
from deployments.webhooks.targets import SCHEME_PATTERN, SCHEME_REFUSAL
from registry import queries as registry_queries


class WebhookInput(Input):
    url = serializers.CharField(
        max_length=2000,
        help_text="http(s) URL at a public address (or an allowed one)",
        validators=[RegexValidator(SCHEME_PATTERN, SCHEME_REFUSAL)],  # in the schema too
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_CHOICES), min_length=1, max_length=len(EVENT_CHOICES)
    )
    model = serializers.CharField(
        max_length=100,
        required=False,
        allow_null=True,
        default=None,
        help_text="a model's name; null: every model (staff)",
    )
    secret = serializers.CharField(
        min_length=16,
        max_length=200,
        required=False,
        help_text="signs each delivery; generated when left out",
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    active = serializers.BooleanField(required=False, default=True)

    def spec(self, *, secret: str | None = None) -> WebhookSpec:
        """The typed input (the model looked up: 404 when there is none)."""
        data = self.validated_data
        name = data.get("model")
        return WebhookSpec(
            url=data["url"],
            secret=data.get("secret") or secret or services.new_secret(),
            event_types=tuple(data["event_types"]),
            model=registry_queries.get_model(name) if name else None,
            description=data["description"],
            active=data["active"],
        )


class WebhookOutput(serializers.ModelSerializer[Webhook]):
    model = serializers.CharField(source="model.name", default=None, allow_null=True)
    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_CHOICES))
    created_by: serializers.StringRelatedField[Any] = serializers.StringRelatedField(allow_null=True)

    class Meta:
        model = Webhook
        fields = (
            "id",
            "url",
            "event_types",
            "model",
            "description",
            "active",
            "created_by",
            "created_at",
            "updated_at",
        )


class WebhookCreatedOutput(WebhookOutput):
    """The new subscription with its secret: the only answer that shows it."""

    secret = serializers.CharField()

    class Meta(WebhookOutput.Meta):
        fields: tuple[str, ...] = (*WebhookOutput.Meta.fields, "secret")  # type: ignore[assignment]


class DeliveryOutput(serializers.ModelSerializer[WebhookDelivery]):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    redelivery_of: serializers.PrimaryKeyRelatedField[WebhookDelivery] = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True, help_text="the delivery this one sends again"
    )

    class Meta:
        model = WebhookDelivery
        fields = (
            "id",
            "event_id",
            "event_type",
            "status",
            "attempts",
            "next_retry_at",
            "last_status_code",
            "last_latency_ms",
            "last_error",
            "created_at",
            "delivered_at",
            "redelivery_of",
            "body",
        )
