"""A row another request deletes while this one works on it: a 404 that says so, never a 500 and
never the row brought back. Each test deletes the row between the view's read and the service's
change, as a concurrent request (or the reconcile loop ending a deployment) does."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from deployments import queries
from deployments.inputs import VariantSpec, VersionTarget
from deployments.models import Deployment
from deployments.services.deployments import create_deployment
from deployments.webhooks import services as webhook_services
from deployments.webhooks.models import Webhook
from tests.support.races import delete_after_read
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def deleted_after_read(owner: User, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """A deployment that is gone once a view has read it for a change."""
    version = ready_version(owner)
    ready_version(owner, number=2)
    deployment = create_deployment(
        name="fraud", model=version.model, actor=owner, variants=[VariantSpec(VersionTarget(1))]
    )
    delete_after_read(monkeypatch, queries, "deployment_for_change")
    return deployment


def test_the_api_answers_404_for_a_deployment_deleted_meanwhile(
    deleted_after_read: Deployment, owner_api: APIClient
) -> None:
    answer = owner_api.post(
        "/api/v1/deployments/fraud/variants/", {"name": "candidate", "version": 2}, format="json"
    )

    assert answer.status_code == 404, answer.content
    assert answer.json() == {
        "message": "the deployment was deleted by another request meanwhile",
        "code": "deleted",
        "extra": {},
    }
    assert not Deployment.objects.exists()


def test_a_page_answers_404_for_a_deployment_deleted_meanwhile(
    deleted_after_read: Deployment, owner: User
) -> None:
    web = Client()  # the form's CSRF token is not what this test is about
    web.force_login(owner)
    answer = web.post(reverse("deployments:stop", args=["fraud"]))

    assert answer.status_code == 404
    assert "the deployment was deleted by another request meanwhile" in answer.content.decode()


def test_a_webhook_changed_while_it_is_deleted_stays_deleted(
    owner: User, owner_api: APIClient, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.KILN_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    ready_version(owner)
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["alias.moved"], "model": "cnn"}
    created = owner_api.post("/api/v1/webhooks/", body, format="json").json()
    delete_after_read(monkeypatch, webhook_services, "get_webhook")

    answer = owner_api.put(f"/api/v1/webhooks/{created['id']}/", {**body, "active": False}, format="json")

    assert answer.status_code == 404, answer.content
    assert answer.json()["message"] == f"webhook {created['id']} was deleted"
    assert not Webhook.objects.exists()  # a save would have inserted it again
