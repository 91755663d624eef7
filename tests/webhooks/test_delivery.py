"""Webhook deliveries against a real HTTP receiver: recorded with the change, signed, retried, sent once."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from config.outbox.models import OutboxMessage
from deployments.models import Variant, Worker
from deployments.reconcile.status import update_status
from deployments.webhooks.delivery import deliver, send_due
from deployments.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery
from deployments.webhooks.signing import verify
from registry.models import AuditEvent
from registry.services import set_alias
from tests.support.versions import ready_version
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db

SECRET = "s3cret-s3cret-s3cret"


def subscribe(client: APIClient, url: str, events: list[str], model: str | None = "cnn") -> Any:
    response = client.post(
        "/api/v1/webhooks/",
        {"url": url, "event_types": events, "model": model, "secret": SECRET},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def move_alias(client: APIClient, version: int = 1) -> None:
    response = client.put("/api/v1/models/cnn/aliases/production/", {"version": version}, format="json")
    assert response.status_code == 200, response.content


def alias_move_delivery(owner: User, client: APIClient, receiver: WebhookReceiver) -> WebhookDelivery:
    """A subscription to alias moves at ``receiver``, an alias moved: the delivery it recorded."""
    ready_version(owner)
    subscribe(client, receiver.url, ["alias.moved"])
    move_alias(client)
    return WebhookDelivery.objects.get()


def make_due(delivery: WebhookDelivery) -> None:
    """As if the backoff had passed (the test does not wait for it)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_retry_at=timezone.now() - timedelta(seconds=1))


def test_an_alias_move_is_recorded_with_the_change_and_delivered_signed(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    ready_version(owner)
    subscribe(owner_api, receiver.url, ["alias.moved"])

    move_alias(owner_api)

    delivery = WebhookDelivery.objects.get()
    assert delivery.event_type == "alias.moved"
    assert OutboxMessage.objects.filter(task="webhooks.deliver", args=[delivery.pk]).exists()
    assert deliver(delivery.pk) == "delivered"

    [request] = receiver.received
    body = json.loads(request.body)
    assert body["id"] == str(delivery.event_id) == request.headers["X-Kiln-Delivery"]
    assert body["type"] == request.headers["X-Kiln-Event"] == "alias.moved"
    audit = AuditEvent.objects.get(action="alias.set")
    assert body["audit"]["id"] == audit.pk
    assert (body["audit"]["action"], body["audit"]["subject"]) == ("alias.set", "model/cnn@production")
    header = request.headers["X-Kiln-Signature"]
    timestamp, digest = (part.split("=", 1)[1] for part in header.split(","))
    expected = hmac.new(SECRET.encode(), f"{timestamp}.{request.body}".encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(digest, expected)
    assert verify(SECRET, header, request.body, now=time.time())
    assert not verify("another-secret-entirely", header, request.body, now=time.time())
    assert not verify(SECRET, header, request.body, now=time.time() + 600)  # past the replay window
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.last_latency_ms is not None
    assert delivery.delivered_at is not None


def test_a_delivered_event_is_never_sent_twice(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    delivery = alias_move_delivery(owner, owner_api, receiver)

    assert deliver(delivery.pk) == "delivered"
    assert deliver(delivery.pk) == "skipped"  # the same Celery message, delivered again

    assert len(receiver.received) == 1
    delivery.refresh_from_db()
    assert delivery.attempts == 1


def test_a_500_is_retried_with_exponential_backoff_then_delivered(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver, settings: Any
) -> None:
    settings.KILN_WEBHOOK_BACKOFF_S = 10.0
    receiver.statuses = [500, 503]
    delivery = alias_move_delivery(owner, owner_api, receiver)

    waits = []
    for expected_attempts in (1, 2):
        before = timezone.now()
        assert deliver(delivery.pk) == "pending"
        delivery.refresh_from_db()
        assert delivery.attempts == expected_attempts
        assert delivery.last_status_code == (500 if expected_attempts == 1 else 503)
        assert delivery.last_error.startswith("HTTP 5")
        assert delivery.next_retry_at is not None
        waits.append((delivery.next_retry_at - before).total_seconds())
        assert deliver(delivery.pk) == "skipped"  # not due yet
        make_due(delivery)
    assert deliver(delivery.pk) == "delivered"

    assert 9.5 < waits[0] < 11.5
    assert 19.5 < waits[1] < 21.5  # doubled
    assert len(receiver.received) == 3
    assert len({r.headers["X-Kiln-Delivery"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.next_retry_at) == (
        "delivered",
        3,
        200,
        None,
    )


def test_retries_stop_after_the_last_attempt(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver, settings: Any
) -> None:
    settings.KILN_WEBHOOK_MAX_ATTEMPTS = 2
    receiver.statuses = [500, 500, 500]
    delivery = alias_move_delivery(owner, owner_api, receiver)

    assert deliver(delivery.pk) == "pending"
    make_due(delivery)
    assert deliver(delivery.pk) == "failed"
    assert deliver(delivery.pk) == "skipped"

    assert len(receiver.received) == 2
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_retry_at) == ("failed", 2, None)


def test_a_rolled_back_change_records_no_delivery(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    version = ready_version(owner)
    subscribe(owner_api, receiver.url, ["alias.moved"])

    written = []

    def change_that_fails() -> None:
        with transaction.atomic():
            set_alias(model=version.model, name="production", version_number=1, actor=owner)
            written.append(WebhookDelivery.objects.count())  # written in the change's transaction
            raise RuntimeError

    with pytest.raises(RuntimeError):
        change_that_fails()

    assert written == [1]

    assert not WebhookDelivery.objects.exists()
    assert not OutboxMessage.objects.filter(task="webhooks.deliver").exists()


def test_only_subscriptions_for_the_event_type_and_the_model_get_it(
    owner: User, staff: User, api_as: Any, receiver: WebhookReceiver
) -> None:
    owner_api = api_as(owner)
    ready_version(owner)
    ready_version(owner, model="other")
    for_cnn = subscribe(owner_api, receiver.url, ["alias.moved"])
    subscribe(owner_api, receiver.url, ["alias.moved"], model="other")
    subscribe(owner_api, receiver.url, ["version.ready", "rollout.started"])
    everything = subscribe(api_as(staff), receiver.url, ["alias.moved"], model=None)
    Webhook.objects.create(url=receiver.url, secret=SECRET, event_types=["alias.moved"], active=False)

    move_alias(owner_api)

    assert sorted(WebhookDelivery.objects.values_list("webhook_id", flat=True)) == sorted(
        [for_cnn["id"], everything["id"]]
    )
    assert len({d.event_id for d in WebhookDelivery.objects.all()}) == 1


def test_a_deployment_that_becomes_degraded_is_announced_once(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    ready_version(owner)
    created = owner_api.post(
        "/api/v1/deployments/", {"name": "web", "model": "cnn", "variants": [{"version": 1, "replicas": 2}]}
    )
    assert created.status_code == 201, created.content
    subscribe(owner_api, receiver.url, ["deployment.degraded"])
    variant = Variant.objects.get()
    Worker.objects.create(variant=variant, version=variant.version, backend="process", state="ready")

    deployment = variant.deployment
    update_status(deployment)
    update_status(deployment)

    event = AuditEvent.objects.get(action="deployment.degraded")
    assert event.after == {"status": "degraded"}
    assert event.reason == "1 of 2 replicas ready"
    delivery = WebhookDelivery.objects.get()
    assert delivery.event_type == "deployment.degraded"
    assert deliver(delivery.pk) == DeliveryStatus.DELIVERED
    assert json.loads(receiver.received[0].body)["audit"]["subject"] == "deployment/web"


def test_a_send_cut_short_is_claimed_again_after_its_lease_and_the_sweep_requeues_overdue_retries(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    delivery = alias_move_delivery(owner, owner_api, receiver)
    # A worker claimed it and died mid-send: the row says ``sending`` under a lease.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status="sending", attempts=1, lease_until=timezone.now() + timedelta(seconds=60)
    )
    assert deliver(delivery.pk) == "skipped"  # the lease still holds
    assert send_due() == 0

    WebhookDelivery.objects.filter(pk=delivery.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert send_due() == 1
    assert deliver(delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.lease_until) == (2, None)
    assert send_due() == 0
