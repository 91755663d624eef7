"""Aliases move between versions and every move is audited."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from registry.models import AuditEvent, ModelVersion, VersionStatus
from tests.support.torch_models import save_torchscript_cnn
from tests.support.uploads import create_model, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_versions(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    for seed in (1, 2):
        path = tmp_path / f"m{seed}.pt"
        response = upload(owner_api, "cnn", path, signature=save_torchscript_cnn(path, seed=seed))
        assert response.status_code == 201
    ModelVersion.objects.update(status=VersionStatus.READY)  # as a conversion leaves them


@pytest.mark.usefixtures("two_versions")
def test_an_alias_is_set_moved_and_deleted_with_an_audit_event_each(owner_api: APIClient) -> None:
    created = owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json")
    moved = owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 2}, format="json")
    shown = owner_api.get("/api/v1/models/cnn/").json()["aliases"]
    deleted = owner_api.delete("/api/v1/models/cnn/aliases/production/")

    assert created.status_code == 200
    assert moved.json()["version"] == 2
    assert shown == [
        {"name": "production", "version": 2, "updated_by": "olivia", "updated_at": shown[0]["updated_at"]}
    ]
    assert deleted.status_code == 204
    events = list(AuditEvent.objects.filter(subject="model/cnn@production").order_by("id"))
    assert [(e.action, e.before, e.after, e.actor_label) for e in events] == [
        ("alias.set", None, {"version": 1}, "olivia"),
        ("alias.moved", {"version": 1}, {"version": 2}, "olivia"),
        ("alias.deleted", {"version": 2}, None, "olivia"),
    ]


@pytest.mark.usefixtures("two_versions")
def test_alias_errors_name_the_problem(owner_api: APIClient) -> None:
    missing_version = owner_api.put("/api/v1/models/cnn/aliases/staging/", {"version": 7}, format="json")
    reserved = owner_api.put("/api/v1/models/cnn/aliases/latest/", {"version": 1}, format="json")
    no_body = owner_api.put("/api/v1/models/cnn/aliases/staging/", {}, format="json")
    unknown = owner_api.delete("/api/v1/models/cnn/aliases/nothing/")

    assert missing_version.status_code == 404
    assert "no version 7" in missing_version.json()["message"]
    assert reserved.status_code == 400
    assert "reserved" in reserved.json()["message"]
    assert no_body.status_code == 400
    assert no_body.json()["message"].startswith("version:")
    assert unknown.status_code == 404


@pytest.mark.usefixtures("two_versions")
def test_audit_events_are_listed_newest_first_and_filtered_by_model(owner_api: APIClient) -> None:
    owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json")

    events = owner_api.get("/api/v1/audit-events/?model=cnn").json()["results"]

    assert [e["action"] for e in events] == [
        "alias.set",
        "version.registered",
        "version.registered",
        "model.created",
    ]
    assert events[0]["actor"] == "olivia"


@pytest.mark.usefixtures("two_versions")
@pytest.mark.parametrize("status", ["registered", "converting", "failed"])
def test_an_alias_points_only_at_a_ready_version_409_naming_its_state(
    owner_api: APIClient, status: str
) -> None:
    owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json")
    ModelVersion.objects.filter(version=2).update(status=status)

    refused = owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 2}, format="json")

    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "version_not_ready"
    assert f"is {status}, not ready" in body["message"]
    assert body["extra"] == {"version": 2, "status": status}
    assert owner_api.get("/api/v1/models/cnn/").json()["aliases"][0]["version"] == 1
    assert not AuditEvent.objects.filter(action="alias.moved").exists()


@pytest.mark.usefixtures("two_versions")
def test_the_version_page_offers_the_alias_control_only_on_a_ready_version(owner: User) -> None:
    ModelVersion.objects.filter(version=2).update(status=VersionStatus.FAILED)
    browser = Client()
    browser.force_login(owner)

    ready = browser.get("/models/cnn/versions/1/").content.decode()
    failed = browser.get("/models/cnn/versions/2/").content.decode()

    assert "Move alias production to v1" in ready
    assert "Move alias production" not in failed
    assert "Promote to production" not in ready + failed
    assert "Aliases point only at ready versions; v2 is failed." in failed
