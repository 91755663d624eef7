"""Webhooks never reach the platform's own network (SSRF): at subscription and again at every delivery."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.webhooks.delivery import deliver
from deployments.webhooks.models import Webhook, WebhookDelivery
from deployments.webhooks.services import ping_webhook
from tests.support.versions import ready_version
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.20:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:8000/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
        "http://localhost:8000/hook",
        "http://user:pw@example.com/hook",
        "file:///etc/passwd",
    ],
)
def test_a_subscription_to_a_private_address_is_a_400_naming_the_url(
    owner: User, owner_api: APIClient, url: str
) -> None:
    ready_version(owner)
    response = owner_api.post(
        "/api/v1/webhooks/", {"url": url, "event_types": ["version.ready"], "model": "cnn"}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith("url: ")
    assert not Webhook.objects.exists()


def test_the_admin_allow_list_admits_hosts_and_cidrs(
    owner: User, owner_api: APIClient, settings: Any
) -> None:
    settings.KILN_WEBHOOK_ALLOWED_HOSTS = ["10.0.0.0/8", "localhost"]
    ready_version(owner)
    for url in ("http://10.1.2.3/hook", "http://localhost:9/hook"):
        response = owner_api.post(
            "/api/v1/webhooks/", {"url": url, "event_types": ["version.ready"], "model": "cnn"}, format="json"
        )
        assert response.status_code == 201, response.content


def test_a_name_that_resolves_to_a_private_address_at_delivery_time_is_not_called(
    owner: User, settings: Any
) -> None:
    """DNS rebinding: the check runs again before every attempt, on what the name resolves to then."""
    receiver = WebhookReceiver().start()
    try:
        settings.KILN_WEBHOOK_ALLOWED_HOSTS = []
        # As if ``localhost`` had resolved to a public address when the subscription was made.
        webhook = Webhook.objects.create(
            url=f"http://localhost:{receiver.port}/hook", secret="x" * 20, event_types=["version.ready"]
        )
        delivery = ping_webhook(webhook=webhook, actor=User.objects.create_superuser("root", "r@x.org", "pw"))

        assert deliver(delivery.pk) == "pending"

        assert receiver.received == []
        delivery = WebhookDelivery.objects.get(pk=delivery.pk)
        assert delivery.last_status_code is None
        assert "not a public address" in delivery.last_error
        assert delivery.attempts == 1
    finally:
        receiver.stop()
