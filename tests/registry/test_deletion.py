"""Deleting versions and models: refused while anything uses them, their files gone once none shares them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from deployments.models import Rollout, Variant, Worker
from registry import services, storage
from registry.models import AuditEvent, ModelVersion, RegisteredModel, VersionStatus
from tests.support.deployments import two_ready_arms
from tests.support.torch_models import save_torchscript_cnn
from tests.support.uploads import create_model, upload

pytestmark = pytest.mark.django_db


def _upload(client: APIClient, tmp_path: Path, seed: int, **fields: Any) -> dict[str, Any]:
    path = tmp_path / f"cnn-{seed}.pt"
    signature = save_torchscript_cnn(path, seed=seed)
    response = upload(client, "cnn", path, signature=signature, **fields)
    assert response.status_code == 201, response.content
    ModelVersion.objects.filter(status=VersionStatus.REGISTERED).update(status=VersionStatus.READY)
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def committed(django_capture_on_commit_callbacks: Callable[..., Any]) -> Callable[[APIClient, str], Any]:
    """A DELETE whose after-commit work (removing the files) runs, as it does outside a test's transaction."""

    def delete(client: APIClient, url: str) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return client.delete(url)

    return delete


def _two_versions_production_on_v2(client: APIClient, tmp_path: Path) -> None:
    create_model(client)
    _upload(client, tmp_path, seed=1)
    _upload(client, tmp_path, seed=2)
    moved = client.put("/api/v1/models/cnn/aliases/production/", {"version": 2}, format="json")
    assert moved.status_code == 200, moved.content


def _file(model: str, number: int) -> Path:
    return storage.resolve(ModelVersion.objects.get(model__name=model, version=number).source_path)


def test_a_deleted_version_takes_its_file_and_leaves_an_audit_event(
    owner_api: APIClient, tmp_path: Path, committed: Any
) -> None:
    create_model(owner_api)
    _upload(owner_api, tmp_path, seed=1)
    _upload(owner_api, tmp_path, seed=2)
    first, second = _file("cnn", 1), _file("cnn", 2)

    deleted = committed(owner_api, "/api/v1/models/cnn/versions/1/")

    assert deleted.status_code == 204, deleted.content
    assert owner_api.get("/api/v1/models/cnn/versions/1/").status_code == 404
    assert not first.exists()
    assert second.exists()
    event = AuditEvent.objects.get(action="version.deleted")
    assert (event.subject, event.actor_label) == ("model/cnn/v1", "olivia")
    assert event.before == {"version": 1, "status": "ready", "source_sha256": ANY, "onnx_sha256": ""}
    again = owner_api.delete("/api/v1/models/cnn/versions/1/")
    assert again.status_code == 404
    assert _upload(owner_api, tmp_path, seed=1)["version"] == 3  # numbers are never given again


def test_bytes_two_versions_share_stay_until_the_last_of_them_goes(
    owner_api: APIClient, tmp_path: Path, committed: Any
) -> None:
    create_model(owner_api)
    _upload(owner_api, tmp_path, seed=1)
    _upload(owner_api, tmp_path, seed=1, if_exists="new")
    shared = _file("cnn", 1)
    assert shared == _file("cnn", 2)

    assert committed(owner_api, "/api/v1/models/cnn/versions/1/").status_code == 204
    assert shared.exists()
    assert committed(owner_api, "/api/v1/models/cnn/versions/2/").status_code == 204
    assert not shared.exists()


def test_a_version_in_use_is_refused_naming_every_use(owner: User, owner_api: APIClient) -> None:
    two_ready_arms(owner, owner_api)  # "ab": a follows production (v1), b serves v2; ready workers

    first = owner_api.delete("/api/v1/models/cnn/versions/1/")
    second = owner_api.delete("/api/v1/models/cnn/versions/2/")
    model = owner_api.delete("/api/v1/models/cnn/")

    assert first.status_code == 409
    assert first.json()["code"] == "in_use"
    message = first.json()["message"]
    assert message.startswith("version 1 of 'cnn' is in use: alias 'production' points at it; ")
    assert "deployment 'ab' variant 'a' serves v1" in message
    assert "of deployment 'ab' runs v1 (ready)" in message
    assert message.endswith("runs v1 (ready)")
    assert "deployment 'ab' variant 'b' is pinned to v2" in second.json()["message"]
    assert model.status_code == 409
    assert "deployment 'ab' serves the model" in model.json()["message"]
    assert ModelVersion.objects.count() == 2
    assert not AuditEvent.objects.filter(action__endswith=".deleted").exists()


def test_a_refusal_names_ten_running_workers_and_counts_the_rest(owner: User, owner_api: APIClient) -> None:
    two_ready_arms(owner, owner_api)
    arm = Variant.objects.get(deployment__name="ab", name="a")
    running = Worker.objects.filter(variant=arm, state="ready").count()
    Worker.objects.bulk_create(
        Worker(variant=arm, version=arm.version, backend="process", state="starting")
        for _ in range(12 - running)
    )

    message = owner_api.delete("/api/v1/models/cnn/versions/1/").json()["message"]

    assert message.count(" runs v1 (") == 10
    assert message.endswith("; and 2 more workers")


def test_a_version_whose_conversion_has_not_ended_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    _upload(owner_api, tmp_path, seed=1)
    ModelVersion.objects.update(status=VersionStatus.CONVERTING)

    refused = owner_api.delete("/api/v1/models/cnn/versions/1/")

    assert refused.status_code == 409
    assert "v1 is converting: its conversion has not ended" in refused.json()["message"]


def test_what_only_remembers_a_version_goes_with_it(owner: User, owner_api: APIClient) -> None:
    """A deployment moved off v2: its ended workers' rows go, a finished rollout forgets the version."""
    two_ready_arms(owner, owner_api)
    a, b = Variant.objects.get(name="a"), Variant.objects.get(name="b")
    rollout = Rollout.objects.create(  # a rolled v2 out once, and back
        deployment=a.deployment,
        candidate=a,
        baseline=a,
        version=b.version,
        steps=[50, 100],
        hold_s=1,
        max_error_rate=0.1,
        max_p99_ms=100,
        state="rolled_back",
        finished_at=timezone.now(),
    )
    assert owner_api.delete("/api/v1/deployments/ab/variants/b/").status_code in (200, 202, 204)
    Variant.objects.filter(name="b").delete()  # as the reconcile loop does once its workers have ended
    Worker.objects.create(variant=Variant.objects.get(name="a"), version=b.version, state="stopped")

    deleted = owner_api.delete("/api/v1/models/cnn/versions/2/")

    assert deleted.status_code == 204, deleted.content
    assert not Worker.objects.filter(version__version=2).exists()
    assert Worker.objects.filter(state="ready").count() == 1  # v1's worker serves on
    rollout = Rollout.objects.get(pk=rollout.pk)
    assert rollout.version is None
    assert rollout.state == "rolled_back"


def test_a_model_goes_with_its_aliases_versions_and_files(
    owner_api: APIClient, tmp_path: Path, committed: Any
) -> None:
    _two_versions_production_on_v2(owner_api, tmp_path)
    files = [_file("cnn", 1), _file("cnn", 2)]

    deleted = committed(owner_api, "/api/v1/models/cnn/")

    assert deleted.status_code == 204, deleted.content
    assert not RegisteredModel.objects.exists()
    assert not ModelVersion.objects.exists()
    assert not any(f.exists() for f in files)
    event = AuditEvent.objects.get(action="model.deleted")
    assert (event.subject, event.before) == ("model/cnn", {"versions": [1, 2], "aliases": {"production": 2}})
    assert create_model(owner_api)["name"] == "cnn"  # the name is free again


def test_only_who_may_change_the_model_may_delete_it(
    owner_api: APIClient, outsider: User, api_as: Any, anonymous_api: APIClient, tmp_path: Path
) -> None:
    other_api = api_as(outsider)
    create_model(owner_api)
    _upload(owner_api, tmp_path, seed=1)

    assert other_api.delete("/api/v1/models/cnn/versions/1/").status_code == 403
    assert other_api.delete("/api/v1/models/cnn/").status_code == 403
    assert anonymous_api.delete("/api/v1/models/cnn/").status_code == 401
    assert ModelVersion.objects.count() == 1


def test_a_file_renamed_aside_comes_back_when_a_row_committed_meanwhile(tmp_path: Path) -> None:
    source = tmp_path / "bytes"
    source.write_bytes(b"weights")
    digest, _ = storage.sha256_file(source)
    relative, _ = storage.store_file(source, digest)
    answers = iter([False, True])  # no row before the rename, one (an upload) after it

    assert storage.remove_unreferenced(relative, lambda: next(answers)) is False
    assert storage.resolve(relative).read_bytes() == b"weights"

    assert storage.remove_unreferenced(relative, lambda: False) is True
    storage.ensure_stored(relative, source, digest)  # an upload whose row committed after the removal
    assert storage.resolve(relative).read_bytes() == b"weights"


@pytest.mark.django_db(transaction=True)
def test_an_upload_of_the_same_bytes_between_storing_and_committing_keeps_its_file(
    owner: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload finds the file stored, the last version with those bytes is deleted (the file goes),
    then the upload commits its row: the row's file is stored again, not lost."""
    path = tmp_path / "cnn.pt"
    signature = save_torchscript_cnn(path, seed=3)
    model = services.create_model(owner=owner, name="cnn")
    first = services.register_version(model=model, upload_path=path, actor=owner, signature=signature).version
    ModelVersion.objects.filter(pk=first.pk).update(status=VersionStatus.READY)
    stored, go_on = threading.Event(), threading.Event()
    store_path = storage.store_path

    def paused(upload: Path) -> tuple[str, str, int, bool]:
        found = store_path(upload)
        stored.set()
        assert go_on.wait(30)
        return found

    monkeypatch.setattr(storage, "store_path", paused)
    again = tmp_path / "again.pt"
    again.write_bytes(path.read_bytes())

    def register() -> ModelVersion:
        try:
            return services.register_version(
                model=model, upload_path=again, actor=owner, signature=signature
            ).version
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(register)
        assert stored.wait(30)
        services.delete_version(version=first, actor=owner)
        assert not storage.resolve(first.source_path).exists()  # the last row with it went: so did the file
        go_on.set()
        second = pending.result()

    assert second.source_path == first.source_path
    assert storage.resolve(second.source_path).read_bytes() == path.read_bytes()


def test_the_web_pages_delete_a_version_and_a_model_and_say_why_not(
    owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    _two_versions_production_on_v2(owner_api, tmp_path)
    browser = Client()
    browser.force_login(owner)
    page = browser.get("/models/cnn/versions/1/").content.decode()
    assert 'action="/models/cnn/versions/1/delete/"' in page
    assert "data-confirm=" in page

    deleted = browser.post("/models/cnn/versions/1/delete/", follow=True)
    refused = browser.post("/models/cnn/versions/2/delete/", follow=True)

    assert deleted.redirect_chain[-1][0] == "/models/cnn/"
    assert "Version 1 of cnn deleted." in deleted.content.decode()
    assert refused.redirect_chain[-1][0] == "/models/cnn/versions/2/"
    assert "alias &#x27;production&#x27; points at it" in refused.content.decode()
    gone = browser.post("/models/cnn/delete/", follow=True)
    assert gone.redirect_chain[-1][0] == "/"
    assert "Model cnn deleted." in gone.content.decode()
    assert not RegisteredModel.objects.exists()


def test_a_delete_form_without_its_csrf_token_or_by_another_user_deletes_nothing(
    owner: User, outsider: User, owner_api: APIClient, tmp_path: Path
) -> None:
    create_model(owner_api)
    _upload(owner_api, tmp_path, seed=1)
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(owner)
    other = Client()
    other.force_login(outsider)

    assert forged.post("/models/cnn/versions/1/delete/").status_code == 403
    assert other.post("/models/cnn/delete/").status_code == 403
    assert "Delete model" not in other.get("/models/cnn/").content.decode()
    assert ModelVersion.objects.count() == 1
