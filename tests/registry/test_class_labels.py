"""Class labels: uploaded with a version (API, CLI text file, web form) or changed later (PATCH),
checked against its outputs, shown on its page, and handed to every worker of it (the launch spec;
a change rolls the workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from deployments.inputs import VariantSpec, VersionTarget
from deployments.reconcile.spec import spec_hash, version_worker_spec
from deployments.services.deployments import create_deployment
from inference_worker.contracts.batching import BatchingConfig
from inference_worker.contracts.labels import parse_labels_text
from inference_worker.contracts.launch import parse_launch
from registry import queries
from registry.models import AuditEvent, ModelVersion
from registry.services import update_version
from tests.support.races import delete_after_read
from tests.support.torch_models import save_onnx_cnn, save_torchscript_cnn
from tests.support.uploads import create_model, upload
from tests.support.versions import stored_version

pytestmark = pytest.mark.django_db
DIGITS = [f"class {i}" for i in range(10)]


@pytest.fixture
def onnx_cnn(owner_api: APIClient, tmp_path: Path) -> Path:
    create_model(owner_api)
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)  # one output, logits [-1, 10]
    return path


def test_labels_one_per_line_name_the_first_outputs_classes(owner_api: APIClient, onnx_cnn: Path) -> None:
    answer = upload(
        owner_api, "cnn", onnx_cnn, class_labels="\n" + "\n".join(f"  {d} " for d in DIGITS) + "\n\n"
    )

    assert answer.status_code == 201, answer.content
    assert answer.json()["class_labels"] == {"logits": DIGITS}
    version = owner_api.get("/api/v1/models/cnn/versions/1/").json()
    assert version["class_labels"] == {"logits": DIGITS}


def test_labels_by_output_name_as_json_and_every_worker_gets_them(
    owner_api: APIClient, onnx_cnn: Path
) -> None:
    labels = {"logits": [f"é-{i}: «x»" for i in range(10)]}

    answer = upload(owner_api, "cnn", onnx_cnn, class_labels=labels)

    assert answer.status_code == 201, answer.content
    version = ModelVersion.objects.get()
    version.onnx_path, version.onnx_sha256 = version.source_path, version.source_sha256  # ONNX already
    spec = version_worker_spec(
        version=version,
        deployment="cnn",
        variant="primary",
        batching=BatchingConfig(),
        worker_id=1,
        report_url="http://127.0.0.1:8000/api/v1/reports/",
        token="t",
    )
    argv = spec.launch.argv()
    assert "--class-labels" in argv
    read_back = parse_launch(argv)  # as the worker reads its command line
    assert parse_labels_text(read_back.class_labels).of("logits") == tuple(labels["logits"])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("cat\ndog", "class_labels.logits: 2 labels for the 10 classes of output 'logits' (shape [-1, 10])"),
        ({"scores": DIGITS}, "class_labels.scores: the model has no output 'scores' (its outputs: logits)"),
        ("\n".join([*DIGITS[:3], "", *DIGITS[3:9]]), "class_labels.logits[3]: must be 1-256 characters"),
        ("\n".join([*DIGITS[:9], "x" * 257]), "class_labels.logits[9]: must be 1-256 characters"),
        ({"logits": "0123456789"}, "class_labels.logits: must be a list"),
        ({"logits": [1] * 10}, "class_labels.logits[0]: must be a string"),
        ('{"logits": ["a\\tb"] * 10}', "class_labels"),
        ("[" * 100_000, "class_labels.logits[0]: must be 1-256 characters"),  # deeper than JSON is read
    ],
)
def test_labels_that_do_not_fit_the_outputs_are_refused_with_the_reason(
    owner_api: APIClient, onnx_cnn: Path, labels: object, message: str
) -> None:
    answer = upload(owner_api, "cnn", onnx_cnn, class_labels=labels)

    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] == "invalid_labels"
    assert answer.json()["message"].startswith(message)
    assert not ModelVersion.objects.exists()


def test_a_label_with_a_nul_character_is_refused(owner_api: APIClient, onnx_cnn: Path) -> None:
    answer = upload(owner_api, "cnn", onnx_cnn, class_labels="\n".join([*DIGITS[:9], "nul\x00"]))

    assert answer.status_code == 400, answer.content
    assert answer.json()["message"].startswith("class_labels: ")
    assert not ModelVersion.objects.exists()


def test_labels_over_the_size_limit_are_refused(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)
    signature["outputs"] = [{"name": "scores", "dtype": "float32", "shape": [-1, -1]}]

    answer = upload(owner_api, "cnn", path, signature=signature, class_labels={"scores": ["y" * 200] * 400})

    assert answer.status_code == 400, answer.content
    assert "above the limit of 65536 bytes" in answer.json()["message"]


def test_a_torchscript_upload_labels_only_the_outputs_its_signature_declares(
    owner_api: APIClient, tmp_path: Path
) -> None:
    create_model(owner_api)
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)

    undeclared = upload(owner_api, "cnn", path, signature=signature, class_labels="\n".join(DIGITS))
    signature["outputs"] = [{"name": "digit", "dtype": "float32", "shape": [-1, 10]}]
    declared = upload(owner_api, "cnn", path, signature=signature, class_labels="\n".join(DIGITS))

    assert undeclared.status_code == 400
    assert "unless the upload's signature declares them ('outputs')" in undeclared.json()["message"]
    assert declared.status_code == 201, declared.content
    assert declared.json()["class_labels"] == {"digit": DIGITS}


def test_the_upload_form_takes_labels_and_the_version_page_lists_them(
    owner: User, owner_api: APIClient, onnx_cnn: Path
) -> None:
    web = Client()
    web.force_login(owner)
    with onnx_cnn.open("rb") as handle:
        refused = web.post(
            reverse("registry:version-upload", args=["cnn"]), {"file": handle, "class_labels": "cat\ndog"}
        )
    assert refused.status_code == 400
    assert "2 labels for the 10 classes" in refused.content.decode()

    with onnx_cnn.open("rb") as handle:
        web.post(
            reverse("registry:version-upload", args=["cnn"]),
            {"file": handle, "class_labels": "\n".join(DIGITS)},
        )
    page = web.get(reverse("registry:version-detail", args=["cnn", 1])).content.decode()

    assert ModelVersion.objects.get().class_labels == {"logits": DIGITS}
    assert 'Class labels of <span class="mono">logits</span>: 10' in page
    assert '<ol start="0"><li>class 0</li>' in page


def test_a_versions_labels_and_description_can_be_changed_and_removed(
    owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path)  # converted: outputs known (logits [-1, 10])
    url = "/api/v1/models/cnn/versions/1/"

    as_lines = owner_api.patch(url, {"class_labels": "\n".join(DIGITS)}, format="json")
    as_list = owner_api.patch(url, {"class_labels": DIGITS[::-1], "description": "relabelled"}, format="json")
    wrong = owner_api.patch(url, {"class_labels": {"logits": ["a"]}}, format="json")
    removed = owner_api.patch(url, {"class_labels": []}, format="json")

    assert as_lines.status_code == 200, as_lines.content
    assert as_lines.json()["class_labels"] == {"logits": DIGITS}
    assert as_list.json()["class_labels"] == {"logits": DIGITS[::-1]}
    assert as_list.json()["description"] == "relabelled"
    assert wrong.status_code == 400
    assert wrong.json()["message"].startswith("class_labels.logits: 1 labels for the 10 classes")
    assert removed.json()["class_labels"] == {}
    assert removed.json()["description"] == "relabelled"
    changes = AuditEvent.objects.filter(action="version.updated", subject="model/cnn/v1").count()
    assert changes == 3  # the refused change left no record


def test_only_those_who_may_change_the_model_change_its_versions(
    owner: User, owner_api: APIClient, tmp_path: Path, django_user_model: Any
) -> None:
    stored_version(owner, tmp_path)
    other = APIClient()
    other.force_authenticate(django_user_model.objects.create_user("mallory", password="pw-mallory-123"))

    answer = other.patch("/api/v1/models/cnn/versions/1/", {"class_labels": DIGITS}, format="json")

    assert answer.status_code == 403
    assert ModelVersion.objects.get().class_labels == {}


def test_new_labels_give_the_versions_variants_a_new_fingerprint(owner: User, tmp_path: Path) -> None:
    version = stored_version(owner, tmp_path)
    deployment = create_deployment(
        name="cnn", model=version.model, actor=owner, variants=[VariantSpec(VersionTarget(1))]
    )
    variant = deployment.variants.select_related("version").get()
    unlabelled = spec_hash(variant)

    update_version(version=version, actor=owner, class_labels=DIGITS)
    variant = deployment.variants.select_related("version").get()

    assert spec_hash(variant) != unlabelled  # the reconcile loop rolls the workers onto the labels


def test_the_version_page_changes_the_labels_for_those_who_may(
    owner: User, tmp_path: Path, django_user_model: Any
) -> None:
    stored_version(owner, tmp_path)
    web = Client()
    web.force_login(owner)
    page = reverse("registry:version-detail", args=["cnn", 1])
    save = reverse("registry:version-labels", args=["cnn", 1])

    assert "Add class labels" in web.get(page).content.decode()
    refused = web.post(save, {"class_labels": "cat\ndog"}, follow=True).content.decode()
    saved = web.post(save, {"class_labels": "\n".join(DIGITS)}, follow=True).content.decode()
    shown = web.get(page).content.decode()
    other = Client()
    other.force_login(django_user_model.objects.create_user("mallory", password="pw-mallory-123"))
    foreign = other.post(save, {"class_labels": ""})

    assert "2 labels for the 10 classes" in refused
    assert "Class labels saved" in saved
    assert "Change the class labels" in shown
    assert "\nclass 0\nclass 1\n" in shown  # the field holds them one per line, to edit
    assert foreign.status_code in (403, 404)
    assert ModelVersion.objects.get().class_labels == {"logits": DIGITS}
    assert "Add class labels" not in other.get(page).content.decode()


def test_a_pipeline_run_again_gets_its_version_unless_it_brings_other_labels(
    owner_api: APIClient, onnx_cnn: Path
) -> None:
    first = upload(owner_api, "cnn", onnx_cnn, class_labels="\n".join(DIGITS))
    again = upload(owner_api, "cnn", onnx_cnn, class_labels="\n".join(DIGITS), if_exists="existing")
    unlabelled = upload(owner_api, "cnn", onnx_cnn, if_exists="existing")
    relabelled = upload(
        owner_api, "cnn", onnx_cnn, class_labels=json.dumps(DIGITS[::-1]), if_exists="existing"
    )

    assert first.status_code == 201, first.content
    assert (again.status_code, again.json()["version"]) == (200, 1)
    assert (unlabelled.status_code, unlabelled.json()["version"]) == (200, 1)
    assert relabelled.status_code == 409
    assert relabelled.json()["code"] == "labels_differ"
    assert relabelled.json()["message"].startswith("class_labels: v1 has the same bytes and other labels")
    assert ModelVersion.objects.get().class_labels == {"logits": DIGITS}


def test_labels_for_a_version_deleted_meanwhile_are_a_404(
    owner: User, owner_api: APIClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored_version(owner, tmp_path)
    delete_after_read(monkeypatch, queries, "version_for_change")  # another request deletes it

    answer = owner_api.patch("/api/v1/models/cnn/versions/1/", {"class_labels": DIGITS}, format="json")

    assert answer.status_code == 404, answer.content
    assert answer.json()["message"] == "version 1 of 'cnn' was deleted"
    assert not ModelVersion.objects.exists()


def test_a_change_sent_again_leaves_one_record(owner: User, owner_api: APIClient, tmp_path: Path) -> None:
    """A pipeline run twice PATCHes the same labels and description: the second changes nothing."""
    stored_version(owner, tmp_path)
    model_url, version_url = "/api/v1/models/cnn/", "/api/v1/models/cnn/versions/1/"
    version_change = {"class_labels": DIGITS, "description": "digits"}
    model_change = {"description": "a CNN", "tags": ["vision", "digits"]}

    answers = [owner_api.patch(version_url, version_change, format="json") for _ in range(2)]
    answers += [owner_api.patch(model_url, model_change, format="json") for _ in range(2)]
    answers.append(owner_api.patch(model_url, {"tags": ["digits", "vision"]}, format="json"))  # the same set

    assert [answer.status_code for answer in answers] == [200] * 5, [a.content for a in answers]
    assert answers[1].json()["class_labels"] == {"logits": DIGITS}
    assert answers[3].json()["tags"] == answers[2].json()["tags"]
    assert AuditEvent.objects.filter(action="version.updated").count() == 1
    assert AuditEvent.objects.filter(action="model.updated").count() == 1
    changed = owner_api.patch(version_url, {"description": "digits, relabelled"}, format="json")
    assert changed.json()["description"] == "digits, relabelled"
    assert AuditEvent.objects.filter(action="version.updated").count() == 2
