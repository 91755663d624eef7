"""Webhook subscriptions and their delivery log."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from registry.models import RegisteredModel


class Webhook(models.Model):
    """A subscription: where to POST which release events, signed with ``secret``.

    Global when ``model`` is null (staff only), else only that model's events. The secret is
    stored as given because it must sign; the API shows it once, on creation.
    """

    url = models.URLField(max_length=2000)
    secret = models.CharField(max_length=200)
    event_types = models.JSONField(
        default=list, help_text="webhook event types (see deployments.webhooks.events)"
    )
    model = models.ForeignKey(
        RegisteredModel, on_delete=models.CASCADE, null=True, blank=True, related_name="webhooks"
    )
    description = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        scope = self.model.name if self.model_id and self.model else "all models"
        return f"{self.url} ({scope})"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event for one subscription: the exact body, and every attempt's outcome so far.

    Written in the transaction of the change that caused the event. Sending claims the row by a
    conditional UPDATE (``pending`` and due, or ``sending`` past its lease), so a redelivered
    Celery message never sends a delivered row again. ``event_id`` is the same for every
    subscription and every redelivery of one event: receivers deduplicate on it.
    """

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField(default=uuid.uuid4, db_index=True)
    event_type = models.CharField(max_length=64)
    body = models.TextField(help_text="the JSON payload, signed and sent byte for byte")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True, help_text="when the next attempt is due")
    lease_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_latency_ms = models.FloatField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    redelivery_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="redeliveries"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=("webhook", "-created_at"), name="webhook_delivery_log_idx"),
            models.Index(fields=("status", "next_retry_at"), name="webhook_delivery_due_idx"),
            models.Index(fields=("status", "created_at"), name="webhook_delivery_ended_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> webhook {self.webhook_id}: {self.status}"
