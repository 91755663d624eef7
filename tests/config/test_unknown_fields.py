"""A body field the endpoint does not know is a 400 naming it, never dropped: a misspelt option
(``replica``, ``descripton``) or a read-only one (a version's ``status``) answered 200 and changed
nothing. The schema says so (``additionalProperties: false``), so generated clients agree."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.inputs import VariantSpec, VersionTarget
from deployments.services.deployments import create_deployment
from registry.models import RegisteredModel
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployed(owner: User) -> None:
    version = ready_version(owner)
    create_deployment(
        name="fraud", model=version.model, actor=owner, variants=[VariantSpec(VersionTarget(1))]
    )


@pytest.mark.usefixtures("deployed")
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/api/v1/models/", {"name": "other", "tag": "audio"}, "tag"),
        ("patch", "/api/v1/models/cnn/", {"descripton": "typo"}, "descripton"),
        ("patch", "/api/v1/models/cnn/", {"name": "renamed"}, "name"),
        ("patch", "/api/v1/models/cnn/versions/1/", {"status": "ready"}, "status"),
        ("put", "/api/v1/models/cnn/aliases/prod/", {"version": 1, "pin": True}, "pin"),
        (
            "post",
            "/api/v1/deployments/",
            {"name": "typo", "model": "cnn", "variants": [{"version": 1, "replica": 3}]},
            "variants[0].replica",
        ),
        (
            "post",
            "/api/v1/deployments/fraud/variants/primary/scale/",
            {"replicas": 1, "force": True},
            "force",
        ),
        (
            "post",
            "/api/v1/webhooks/",
            {"url": "https://example.com/h", "event_types": ["alias.moved"], "evnt": 1},
            "evnt",
        ),
    ],
)
def test_an_unknown_body_field_is_a_400_naming_it(
    owner_api: APIClient, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    answer = getattr(owner_api, method)(path, body, format="json")

    assert answer.status_code == 400, answer.content
    message = answer.json()["message"]
    assert message.startswith(f"{field}: not a field of this request (its fields: "), message
    assert RegisteredModel.objects.get(name="cnn").description == ""
    assert not RegisteredModel.objects.filter(name__in=["other", "renamed"]).exists()


def test_the_schema_says_request_bodies_take_no_other_fields(owner_api: APIClient) -> None:
    schema = owner_api.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    for name in ("ModelCreateInputRequest", "VariantInputRequest", "PatchedModelUpdateInputRequest"):
        assert components[name]["additionalProperties"] is False, name
