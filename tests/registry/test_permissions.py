"""Who may read and change a model: owner, teammate, outsider, anonymous."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from registry.models import ModelVersion, RegisteredModel
from tests.support.torch_models import save_torchscript_cnn
from tests.support.uploads import create_model, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def team_model(owner_api: APIClient, team: Group) -> RegisteredModel:
    create_model(owner_api)
    model = RegisteredModel.objects.get(name="cnn")
    model.team = team
    model.save()
    return model


@pytest.mark.usefixtures("team_model")
def test_a_teammate_may_upload_and_move_aliases(
    teammate: User, api_as: Callable[[User], APIClient], tmp_path: Path
) -> None:
    client = api_as(teammate)
    path = tmp_path / "m.pt"

    uploaded = upload(client, "cnn", path, signature=save_torchscript_cnn(path))
    ModelVersion.objects.update(status="ready")  # an alias points only at a ready version
    aliased = client.put("/api/v1/models/cnn/aliases/staging/", {"version": 1}, format="json")

    assert uploaded.status_code == 201
    assert aliased.status_code == 200


@pytest.mark.usefixtures("team_model")
def test_an_outsider_may_read_but_not_change_a_model(
    outsider: User, api_as: Callable[[User], APIClient], tmp_path: Path
) -> None:
    client = api_as(outsider)
    path = tmp_path / "m.pt"

    read = client.get("/api/v1/models/cnn/")
    uploaded = upload(client, "cnn", path, signature=save_torchscript_cnn(path))
    aliased = client.put("/api/v1/models/cnn/aliases/staging/", {"version": 1}, format="json")
    patched = client.patch("/api/v1/models/cnn/", {"description": "mine now"}, format="json")

    assert read.status_code == 200
    assert uploaded.status_code == 403
    assert "only the owner" in uploaded.json()["message"]
    assert aliased.status_code == 403
    assert patched.status_code == 403
    assert not ModelVersion.objects.exists()


@pytest.mark.usefixtures("team_model")
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/v1/models/"),
        ("post", "/api/v1/models/"),
        ("get", "/api/v1/models/cnn/"),
        ("get", "/api/v1/models/cnn/versions/"),
        ("post", "/api/v1/models/cnn/versions/"),
        ("get", "/api/v1/audit-events/"),
        ("put", "/api/v1/models/cnn/aliases/production/"),
        ("get", "/api/schema/?format=json"),
    ],
)
def test_anonymous_callers_get_401_everywhere_on_the_api(
    anonymous_api: APIClient, method: str, url: str
) -> None:
    response = getattr(anonymous_api, method)(url)

    assert response.status_code == 401
    assert "credentials were not provided" in json.loads(response.content)["message"]


def test_health_and_metrics_need_no_login(anonymous_api: APIClient) -> None:
    assert anonymous_api.get("/healthz").status_code == 200
    metrics = anonymous_api.get("/metrics")
    assert metrics.status_code == 200
    assert b"django_http_requests" in metrics.content
