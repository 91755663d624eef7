"""The webhooks API: who may subscribe to what, the secret shown once, the delivery log, redeliver, ping."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.webhooks.delivery import deliver
from deployments.webhooks.models import Webhook, WebhookDelivery
from registry.models import RegisteredModel
from tests.support.versions import ready_version
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db


def create(client: APIClient, url: str, **fields: Any) -> Any:
    return client.post(
        "/api/v1/webhooks/",
        {"url": url, "event_types": ["alias.moved"], "model": "cnn", **fields},
        format="json",
    )


def test_the_secret_is_shown_on_creation_only(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    ready_version(owner)

    created = create(owner_api, receiver.url, description="ci")

    assert created.status_code == 201, created.content
    body = created.json()
    assert len(body["secret"]) == 64  # generated: none was given
    assert body["model"] == "cnn"
    assert body["event_types"] == ["alias.moved"]
    assert Webhook.objects.get().secret == body["secret"]
    read = owner_api.get(f"/api/v1/webhooks/{body['id']}/")
    assert read.status_code == 200
    assert "secret" not in read.json()
    assert [w["id"] for w in owner_api.get("/api/v1/webhooks/").json()["results"]] == [body["id"]]


def test_replacing_a_subscription_keeps_its_secret_unless_a_new_one_is_given(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    ready_version(owner)
    webhook = create(owner_api, receiver.url, secret="first-secret-0123456").json()

    changed = owner_api.put(
        f"/api/v1/webhooks/{webhook['id']}/",
        {
            "url": receiver.url,
            "event_types": ["rollout.started", "version.ready"],
            "model": "cnn",
            "active": False,
        },
        format="json",
    )

    assert changed.status_code == 200, changed.content
    assert changed.json()["event_types"] == ["version.ready", "rollout.started"]
    row = Webhook.objects.get()
    assert (row.secret, row.active) == ("first-secret-0123456", False)
    assert owner_api.delete(f"/api/v1/webhooks/{webhook['id']}/").status_code == 204
    assert not Webhook.objects.exists()


def test_only_those_who_may_change_the_model_manage_its_webhooks(
    owner: User,
    teammate: User,
    outsider: User,
    staff: User,
    api_as: Any,
    receiver: WebhookReceiver,
    team: Any,
) -> None:
    RegisteredModel.objects.filter(pk=ready_version(owner).model_id).update(team=team)
    webhook = create(api_as(owner), receiver.url).json()

    assert create(api_as(outsider), receiver.url).status_code == 403
    assert api_as(outsider).get(f"/api/v1/webhooks/{webhook['id']}/").status_code == 404
    assert api_as(outsider).get("/api/v1/webhooks/").json()["results"] == []
    assert api_as(teammate).get(f"/api/v1/webhooks/{webhook['id']}/").status_code == 200
    assert create(api_as(teammate), receiver.url, event_types=["version.ready"]).status_code == 201
    refused = create(api_as(owner), receiver.url, model=None)
    assert refused.status_code == 403
    assert "staff" in refused.json()["message"]
    assert create(api_as(staff), receiver.url, model=None).status_code == 201
    assert len(api_as(staff).get("/api/v1/webhooks/").json()["results"]) == 3


def test_anonymous_callers_are_refused(anonymous_api: APIClient) -> None:
    assert anonymous_api.get("/api/v1/webhooks/").status_code == 401
    assert anonymous_api.post("/api/v1/webhooks/", {}, format="json").status_code == 401


@pytest.mark.parametrize(
    ("fields", "status", "names"),
    [
        ({"event_types": ["version.exploded"]}, 400, "event_types"),
        ({"event_types": []}, 400, "event_types"),
        ({"secret": "short"}, 400, "secret"),
        ({"model": "nope"}, 404, "nope"),
        ({"url": "not a url"}, 400, "url"),
        ({"url": "ftp://example.com/hook"}, 400, "url"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    owner: User,
    owner_api: APIClient,
    receiver: WebhookReceiver,
    fields: dict[str, Any],
    status: int,
    names: str,
) -> None:
    ready_version(owner)
    response = create(owner_api, fields.pop("url", receiver.url), **fields)
    assert response.status_code == status, response.content
    assert names in json.dumps(response.json())
    assert not Webhook.objects.exists()


def test_ping_the_delivery_log_and_redeliver(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver, django_assert_max_num_queries: Any
) -> None:
    ready_version(owner)
    webhook = create(owner_api, receiver.url).json()

    ping = owner_api.post(f"/api/v1/webhooks/{webhook['id']}/ping/")

    assert ping.status_code == 202, ping.content
    assert (ping.json()["event_type"], ping.json()["status"]) == ("ping", "pending")
    assert deliver(ping.json()["id"]) == "delivered"
    assert receiver.received[0].headers["X-Kiln-Event"] == "ping"
    again = owner_api.post(f"/api/v1/webhooks/{webhook['id']}/deliveries/{ping.json()['id']}/redeliver/")
    assert again.status_code == 202, again.content
    assert again.json()["event_id"] == ping.json()["event_id"]
    assert again.json()["redelivery_of"] == ping.json()["id"]
    assert deliver(again.json()["id"]) == "delivered"
    assert len(receiver.received) == 2

    with django_assert_max_num_queries(8):
        log = owner_api.get(f"/api/v1/webhooks/{webhook['id']}/deliveries/")
    assert log.status_code == 200
    rows = log.json()["results"]
    assert [r["id"] for r in rows] == [again.json()["id"], ping.json()["id"]]
    assert [(r["status"], r["attempts"], r["last_status_code"]) for r in rows] == [("delivered", 1, 200)] * 2
    assert rows[0]["last_latency_ms"] is not None
    assert owner_api.get(f"/api/v1/webhooks/{webhook['id']}/deliveries/?cursor=").status_code == 200
    missing = owner_api.post(f"/api/v1/webhooks/{webhook['id']}/deliveries/999999/redeliver/")
    assert missing.status_code == 404
    assert WebhookDelivery.objects.count() == 2


def test_the_same_subscription_again_is_a_409_naming_the_first(
    owner: User, owner_api: APIClient, receiver: WebhookReceiver
) -> None:
    """A pipeline that subscribes on every run would otherwise double each delivery."""
    ready_version(owner)
    first = create(owner_api, receiver.url).json()

    again = create(owner_api, receiver.url, event_types=["alias.moved"], secret="another-secret-1234")

    assert again.status_code == 409
    assert again.json()["code"] == "duplicate"
    assert again.json()["extra"] == {"id": first["id"]}
    assert create(owner_api, receiver.url, event_types=["version.ready"]).status_code == 201
    assert Webhook.objects.count() == 2
