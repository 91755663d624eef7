"""The webhook pages: create one (its secret shown once), read the delivery log, ping, redeliver, remove."""

from __future__ import annotations

import html

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from deployments.webhooks.delivery import deliver
from deployments.webhooks.models import Webhook, WebhookDelivery
from tests.support.versions import ready_version
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_webhook_made_on_the_page_shows_its_secret_once_and_its_log(
    owner: User, receiver: WebhookReceiver
) -> None:
    ready_version(owner)
    web = signed_in(owner)

    created = web.post(
        reverse("deployments:webhooks"),
        {"url": receiver.url, "event_types": ["alias.moved", "version.ready"], "model": "cnn"},
        follow=True,
    )

    assert created.status_code == 200
    webhook = Webhook.objects.get()
    assert (webhook.model and webhook.model.name, webhook.event_types) == (
        "cnn",
        ["version.ready", "alias.moved"],
    )
    assert webhook.secret in html.unescape(created.content.decode())
    assert (
        webhook.secret
        not in signed_in(owner).get(reverse("deployments:webhook-detail", args=[webhook.pk])).content.decode()
    )

    web.post(reverse("deployments:webhook-ping", args=[webhook.pk]))
    ping = WebhookDelivery.objects.get()
    assert deliver(ping.pk) == "delivered"
    page = web.get(reverse("deployments:webhook-detail", args=[webhook.pk])).content.decode()
    assert "ping" in page
    assert "delivered" in page
    web.post(reverse("deployments:webhook-redeliver", args=[webhook.pk, ping.pk]))
    assert WebhookDelivery.objects.filter(redelivery_of=ping).count() == 1
    listed = web.get(reverse("deployments:webhooks")).content.decode()
    assert receiver.url in listed
    web.post(reverse("deployments:webhook-delete", args=[webhook.pk]))
    assert not Webhook.objects.exists()


def test_the_page_refuses_a_private_address_naming_the_url(owner: User) -> None:
    ready_version(owner)
    page = signed_in(owner).post(
        reverse("deployments:webhooks"),
        {"url": "http://169.254.169.254/", "event_types": ["alias.moved"], "model": "cnn"},
    )
    assert page.status_code == 200
    assert "not a public address" in html.unescape(page.content.decode())
    assert not Webhook.objects.exists()


def test_someone_elses_webhook_is_not_found(owner: User, outsider: User, receiver: WebhookReceiver) -> None:
    ready_version(owner)
    signed_in(owner).post(
        reverse("deployments:webhooks"), {"url": receiver.url, "event_types": ["alias.moved"], "model": "cnn"}
    )
    webhook = Webhook.objects.get()
    outsider_web = signed_in(outsider)
    assert outsider_web.get(reverse("deployments:webhook-detail", args=[webhook.pk])).status_code == 404
    assert outsider_web.post(reverse("deployments:webhook-delete", args=[webhook.pk])).status_code == 404
    assert receiver.url not in outsider_web.get(reverse("deployments:webhooks")).content.decode()
    assert Webhook.objects.exists()
