"""The admin goes through the same service: the URL check applies; pings and redeliveries queue."""

from __future__ import annotations

import html

import pytest
from django.contrib.auth.models import User
from django.test import Client

from deployments.webhooks.models import Webhook, WebhookDelivery
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db


def admin_client(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def test_the_admin_refuses_a_private_address_and_creates_an_allowed_one(
    staff: User, receiver: WebhookReceiver
) -> None:
    web = admin_client(staff)
    form = {"url": "http://10.0.0.1/hook", "secret": "x" * 20, "event_types": ["alias.moved"], "active": "on"}

    refused = web.post("/admin/deployments/webhook/add/", form)

    assert refused.status_code == 200
    assert "not a public address" in html.unescape(refused.content.decode())
    assert not Webhook.objects.exists()
    created = web.post("/admin/deployments/webhook/add/", {**form, "url": receiver.url})
    assert created.status_code == 302
    webhook = Webhook.objects.get()
    assert (webhook.url, webhook.event_types, webhook.model) == (receiver.url, ["alias.moved"], None)

    web.post("/admin/deployments/webhook/", {"action": "ping", "_selected_action": [webhook.pk]})
    ping = WebhookDelivery.objects.get()
    assert ping.event_type == "ping"
    web.post("/admin/deployments/webhookdelivery/", {"action": "redeliver", "_selected_action": [ping.pk]})
    assert WebhookDelivery.objects.filter(redelivery_of=ping).count() == 1
    assert web.get(f"/admin/deployments/webhookdelivery/{ping.pk}/change/").status_code == 200
