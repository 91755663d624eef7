"""Which audit actions are webhook events (one table), and the delivery rows they create.

``on_event_recorded`` is registered on ``registry.hooks.event_recorded``: ``record_event`` calls
it inside the change's transaction, so the delivery rows and their outbox messages commit with
the change, or not at all.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q
from django.utils import timezone

from config import dispatch
from deployments.release_models import TrafficChange
from deployments.webhooks.models import Webhook, WebhookDelivery
from registry.api.serializers import AuditEventOutput
from registry.models import AuditEvent

DELIVER_TASK = "webhooks.deliver"
PING = "ping"

# (audit action, the "status" of its ``after``, or None for any) -> webhook event type.
EVENT_TYPES: dict[tuple[str, str | None], str] = {
    ("version.registered", None): "version.registered",
    ("version.status_changed", "ready"): "version.ready",
    ("version.status_changed", "failed"): "version.failed",
    ("version.deleted", None): "version.deleted",
    ("model.deleted", None): "model.deleted",
    ("alias.set", None): "alias.moved",
    ("alias.moved", None): "alias.moved",
    **{(f"traffic.{kind}", None): "traffic.changed" for kind in TrafficChange.Kind.values},
    ("rollout.started", None): "rollout.started",
    ("rollout.step_advanced", None): "rollout.step_advanced",
    ("rollout.succeeded", None): "rollout.succeeded",
    ("rollout.rolled_back", None): "rollout.rolled_back",
    ("deployment.degraded", None): "deployment.degraded",
    ("deployment.failed", None): "deployment.failed",
}

EVENT_CHOICES: tuple[str, ...] = tuple(dict.fromkeys(EVENT_TYPES.values()))
"""Every event type a subscription can name, in the table's order."""


def event_type_of(action: str, after: Any) -> str | None:
    """The webhook event type of an audit action (None: not a webhook event)."""
    status = after.get("status") if isinstance(after, dict) else None
    return EVENT_TYPES.get((action, status)) or EVENT_TYPES.get((action, None))


def payload(*, event_id: uuid.UUID, event_type: str, audit: dict[str, Any] | None) -> str:
    """The JSON body: event id and type, when, and the audit record that caused it."""
    body = {"id": str(event_id), "type": event_type, "created_at": timezone.now(), "audit": audit}
    return json.dumps(body, cls=DjangoJSONEncoder, sort_keys=True)


def enqueue(delivery: WebhookDelivery) -> None:
    """Send ``delivery`` once the transaction commits (through the outbox: a Redis outage loses none)."""
    dispatch.send_on_commit(DELIVER_TASK, delivery.pk)


def on_event_recorded(*, event: AuditEvent) -> None:
    """Write a delivery for every active subscription that wants this event (hook of ``record_event``)."""
    event_type = event_type_of(event.action, event.after)
    if event_type is None:
        return
    scope = Q(model__isnull=True) | (Q(model_id=event.model_id) if event.model_id else Q(pk__in=[]))
    # A handful of subscriptions per model: the event types are matched here, the same on every
    # database (SQLite, make run's fallback, has no JSON containment lookup).
    webhooks = [w for w in Webhook.objects.filter(scope, active=True) if event_type in w.event_types]
    if not webhooks:
        return
    event_id = uuid.uuid4()
    body = payload(event_id=event_id, event_type=event_type, audit=dict(AuditEventOutput(event).data))
    for webhook in webhooks:
        enqueue(
            WebhookDelivery.objects.create(
                webhook=webhook, event_id=event_id, event_type=event_type, body=body
            )
        )
