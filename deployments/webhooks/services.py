"""Webhook subscriptions: create, change, delete, ping; redeliver one delivery.

Who may manage a subscription: for one model, whoever may change that model; a global one
(every model's events), staff only.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, replace
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet

from config.errors import NotFoundError, PermissionDeniedError, about_field
from deployments.errors import DuplicateDeploymentError, InvalidDeploymentError
from deployments.webhooks.events import EVENT_CHOICES, PING, enqueue, payload
from deployments.webhooks.models import Webhook, WebhookDelivery
from deployments.webhooks.targets import check_url
from registry.models import RegisteredModel


@dataclass(frozen=True)
class WebhookSpec:
    """What a subscription is: where, signed how, for which events, of which model (None: all)."""

    url: str
    secret: str
    event_types: tuple[str, ...]
    model: RegisteredModel | None = None
    description: str = ""
    active: bool = True


def new_secret() -> str:
    """A signing secret for a subscription made without one (shown once)."""
    return secrets.token_hex(32)


def ensure_can_manage(user: Any, model: RegisteredModel | None) -> None:
    """403 unless ``user`` may manage subscriptions of ``model`` (None: global, staff only)."""
    if model is None:
        if not getattr(user, "is_staff", False):
            raise PermissionDeniedError(
                "only staff may subscribe to every model's events; name a model", code="permission_denied"
            )
    elif not model.can_change(user):
        raise PermissionDeniedError(
            f"only the owner of {model.name!r}, its team and staff may manage its webhooks",
            code="permission_denied",
        )


def _check(spec: WebhookSpec) -> WebhookSpec:
    unknown = sorted(set(spec.event_types) - set(EVENT_CHOICES))
    if not spec.event_types or unknown:
        message = f"choose one or more of {', '.join(EVENT_CHOICES)}" + (
            f" (unknown: {', '.join(unknown)})" if unknown else ""
        )
        raise InvalidDeploymentError(f"event_types: {message}", extra=about_field("event_types", message))
    check_url(spec.url)
    return replace(spec, event_types=tuple(e for e in EVENT_CHOICES if e in spec.event_types))


@transaction.atomic
def create_webhook(*, spec: WebhookSpec, actor: Any) -> Webhook:
    """Subscribe ``spec.url`` to events; the URL must point at an allowed address now."""
    ensure_can_manage(actor, spec.model)
    spec = _check(spec)
    same = (
        Webhook.objects.filter(url=spec.url, model=spec.model, event_types=list(spec.event_types))
        .order_by("pk")
        .first()
    )
    if same is not None:  # a pipeline run twice would double every delivery
        raise DuplicateDeploymentError(
            f"url: webhook {same.pk} sends these events to this URL already; change it "
            f"(PUT /api/v1/webhooks/{same.pk}/) or remove it first",
            extra={"id": same.pk},
        )
    return Webhook.objects.create(
        url=spec.url,
        secret=spec.secret,
        event_types=list(spec.event_types),
        model=spec.model,
        description=spec.description,
        active=spec.active,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )


@transaction.atomic
def update_webhook(*, webhook: Webhook, spec: WebhookSpec, actor: Any) -> Webhook:
    """Change a subscription (its scope too: the actor must be allowed both before and after)."""
    ensure_can_manage(actor, webhook.model)
    ensure_can_manage(actor, spec.model)
    spec = _check(spec)
    # Locked first: a save of a row another request deleted would insert it again.
    if not Webhook.objects.select_for_update().filter(pk=webhook.pk).exists():
        raise NotFoundError(f"webhook {webhook.pk} was deleted")
    webhook.url, webhook.secret, webhook.model = spec.url, spec.secret, spec.model
    webhook.event_types, webhook.description, webhook.active = (
        list(spec.event_types),
        spec.description,
        spec.active,
    )
    webhook.save()
    return webhook


@transaction.atomic
def delete_webhook(*, webhook: Webhook, actor: Any) -> None:
    """Remove a subscription and its delivery log."""
    ensure_can_manage(actor, webhook.model)
    webhook.delete()


@transaction.atomic
def ping_webhook(*, webhook: Webhook, actor: Any) -> WebhookDelivery:
    """Queue a ``ping`` event to the subscription (its delivery shows in the log)."""
    ensure_can_manage(actor, webhook.model)
    event_id = uuid.uuid4()
    delivery = WebhookDelivery.objects.create(
        webhook=webhook,
        event_id=event_id,
        event_type=PING,
        body=payload(event_id=event_id, event_type=PING, audit=None),
    )
    enqueue(delivery)
    return delivery


@transaction.atomic
def redeliver(*, delivery: WebhookDelivery, actor: Any) -> WebhookDelivery:
    """Send a delivery's event again as a new delivery (same event id and body, a new log row)."""
    ensure_can_manage(actor, delivery.webhook.model)
    again = WebhookDelivery.objects.create(
        webhook=delivery.webhook,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        body=delivery.body,
        redelivery_of=delivery,
    )
    enqueue(again)
    return again


def get_webhook(webhook_id: int, user: Any) -> Webhook:
    """The subscription ``webhook_id`` if ``user`` may manage it (404 otherwise: not even its existence)."""
    webhook = Webhook.objects.select_related("model").filter(pk=webhook_id).first()
    if webhook is None:
        raise NotFoundError(f"no webhook {webhook_id}")
    try:
        ensure_can_manage(user, webhook.model)
    except PermissionDeniedError as exc:
        raise NotFoundError(f"no webhook {webhook_id}") from exc
    return webhook


def get_delivery(webhook: Webhook, delivery_id: int) -> WebhookDelivery:
    """One delivery of ``webhook`` (404 when it has none with this id)."""
    delivery = (
        WebhookDelivery.objects.select_related("webhook__model")
        .filter(webhook=webhook, pk=delivery_id)
        .first()
    )
    if delivery is None:
        raise NotFoundError(f"webhook {webhook.pk} has no delivery {delivery_id}")
    return delivery


def webhooks_for(user: Any) -> QuerySet[Webhook]:
    """The subscriptions ``user`` may manage: all for staff, else those of models they may change."""
    queryset = Webhook.objects.select_related("model", "created_by").order_by("id")
    if getattr(user, "is_staff", False):
        return queryset
    return queryset.filter(Q(model__owner=user) | Q(model__team__in=user.groups.all())).distinct()
