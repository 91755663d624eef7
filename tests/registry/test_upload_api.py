"""Uploading versions through the REST API, as a CI pipeline would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from django.conf import settings
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from registry import storage
from registry.models import SLUG_RULE, AuditEvent, ModelVersion, RegisteredModel, slug_refusal
from tests.support.torch_models import save_onnx_cnn, save_pt2_cnn, save_torchscript_cnn
from tests.support.uploads import create_model, upload

pytestmark = pytest.mark.django_db


def test_a_torchscript_cnn_with_its_signature_becomes_version_1(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "whatever-name.bin"
    signature = save_torchscript_cnn(path)

    response = upload(
        owner_api,
        "cnn",
        path,
        signature=signature,
        description="first",
        metadata={"git_commit": "abc123", "ci_run_url": "https://ci.example.com/runs/7"},
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["version"] == 1
    assert body["status"] == "registered"
    assert body["source_format"] == "torchscript"
    assert body["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["source_size"] == path.stat().st_size
    assert body["signature"]["inputs"] == signature["inputs"]
    assert body["metadata"]["git_commit"] == "abc123"
    stored = storage.resolve(ModelVersion.objects.get().source_path)
    assert stored.read_bytes() == path.read_bytes()
    assert stored.name == body["source_sha256"]
    assert AuditEvent.objects.filter(action="version.registered", subject="model/cnn/v1").exists()


class _WithDefaults(torch.nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 2.0) -> torch.Tensor:
        return (x if mask is None else x * mask) * scale


@pytest.mark.parametrize(
    ("declared", "status", "message"),
    [
        (1, 201, None),
        (2, 201, None),
        (0, 400, "at least one tensor"),
        (4, 400, "4 declared, but forward() takes 1 to 3 (x, mask, scale)"),
    ],
)
def test_a_torchscript_forward_with_defaults_may_leave_them_out_of_the_signature(
    owner_api: APIClient, tmp_path: Path, declared: int, status: int, message: str | None
) -> None:
    create_model(owner_api)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_WithDefaults()), str(path))
    inputs = [{"name": f"t{i}", "dtype": "float32", "shape": [-1, 4]} for i in range(declared)]

    response = upload(owner_api, "cnn", path, signature={"inputs": inputs})

    assert response.status_code == status, response.content
    if message is not None:
        assert message in response.json()["message"]


def test_a_torchscript_upload_without_signature_is_shown_an_example_of_the_required_arguments(
    owner_api: APIClient, tmp_path: Path
) -> None:
    create_model(owner_api)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_WithDefaults()), str(path))

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    message = response.json()["message"]
    assert "forward(x, mask, scale) (those with a default may be left out)" in message
    assert '{"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 16]}]}' in message


class _TokenClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(50, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embedded: torch.Tensor = self.embedding(input_ids)
        return (embedded * attention_mask.unsqueeze(-1)).sum(1)


def test_the_example_signature_declares_token_ids_and_masks_int64_as_they_must_be(
    owner_api: APIClient, tmp_path: Path
) -> None:
    create_model(owner_api)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_TokenClassifier()), str(path))

    refused = upload(owner_api, "cnn", path).json()["message"]
    example = json.loads(refused[refused.index("for example ") + len("for example ") :])

    assert [i["dtype"] for i in example["inputs"]] == ["int64", "int64"]
    assert upload(owner_api, "cnn", path, signature=example).status_code == 201


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("parity_atol", "-1", "parity_atol"),
        ("parity_rtol", "2", "parity_rtol"),
        ("parity_atol", "nan", "parity_atol"),
        ("parity_rtol", "inf", "parity_rtol"),
        ("parity_atol", "tight", "parity_atol"),
    ],
)
def test_a_parity_tolerance_out_of_bounds_is_a_400_on_upload_and_on_convert(
    owner_api: APIClient, tmp_path: Path, field: str, value: str, message: str
) -> None:
    create_model(owner_api)
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)

    refused = upload(owner_api, "cnn", path, signature=signature, **{field: value})

    assert refused.status_code == 400, refused.content
    assert message in refused.content.decode()
    assert not ModelVersion.objects.exists()
    assert upload(owner_api, "cnn", path, signature=signature).status_code == 201
    again = owner_api.post("/api/v1/models/cnn/versions/1/convert/", {field: value}, format="json")
    assert again.status_code == 400, again.content
    assert message in again.content.decode()
    assert ModelVersion.objects.get().parity_atol is None


def test_an_onnx_upload_gets_its_signature_from_the_graph(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "model.onnx"
    signature = save_onnx_cnn(path)

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["source_format"] == "onnx"
    assert body["signature"] == signature


def test_a_pt2_program_gets_its_signature_from_the_program(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "model.pt2"
    signature = save_pt2_cnn(path)

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 201, response.content
    assert response.json()["source_format"] == "torch_export"
    assert response.json()["signature"] == signature


def test_versions_count_up_and_identical_content_is_stored_once(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "m.pt"
    signature = save_torchscript_cnn(path)

    numbers = [upload(owner_api, "cnn", path, signature=signature).json()["version"] for _ in range(3)]

    assert numbers == [1, 2, 3]
    stored = list((Path(settings.KILN_ARTIFACT_ROOT) / "sha256").rglob("*"))
    assert len([p for p in stored if p.is_file()]) == 1
    listing = owner_api.get("/api/v1/models/cnn/versions/").json()
    assert [v["version"] for v in listing["results"]] == [3, 2, 1]


def test_the_same_bytes_again_are_pointed_out_and_the_caller_chooses_what_happens(
    owner_api: APIClient, tmp_path: Path
) -> None:
    create_model(owner_api)
    path = tmp_path / "m.pt"
    signature = save_torchscript_cnn(path)
    first = upload(owner_api, "cnn", path, signature=signature)

    again = upload(owner_api, "cnn", path, signature=signature)
    existing = upload(owner_api, "cnn", path, signature=signature, if_exists="existing")
    refused = upload(owner_api, "cnn", path, signature=signature, if_exists="refuse")
    wrong = upload(owner_api, "cnn", path, signature=signature, if_exists="maybe")

    assert (first.status_code, first.json()["same_bytes_as"]) == (201, None)
    assert (again.status_code, again.json()["version"], again.json()["same_bytes_as"]) == (201, 2, 1)
    assert (existing.status_code, existing.json()["version"], existing.json()["same_bytes_as"]) == (200, 1, 1)
    assert refused.status_code == 409
    assert refused.json()["code"] == "duplicate_upload"
    assert refused.json()["message"].startswith("file: the same bytes as v1 (sha256 ")
    assert refused.json()["extra"] == {"version": 1}
    assert wrong.status_code == 400
    assert ModelVersion.objects.filter(model__name="cnn").count() == 2


def test_a_declared_signature_that_contradicts_the_onnx_graph_is_refused(
    owner_api: APIClient, tmp_path: Path
) -> None:
    create_model(owner_api)
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    wrong = {"inputs": [{"name": "image", "dtype": "int64", "shape": [-1, 3, 16, 16]}]}

    response = upload(owner_api, "cnn", path, signature=wrong)

    assert response.status_code == 400
    assert "inputs[0].dtype" in response.json()["message"]
    assert not ModelVersion.objects.exists()


def test_a_version_can_be_read_and_its_source_downloaded(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "m.pt"
    upload(owner_api, "cnn", path, signature=save_torchscript_cnn(path))

    detail = owner_api.get("/api/v1/models/cnn/versions/1/")
    download = owner_api.get(detail.json()["artifacts"]["source"])

    assert detail.status_code == 200
    assert detail.json()["artifacts"]["onnx"] is None
    assert download.status_code == 200
    assert download.getvalue() == path.read_bytes()
    assert download["X-Content-SHA256"] == detail.json()["source_sha256"]
    assert "cnn-v1.pt" in download["Content-Disposition"]


def test_the_onnx_download_of_an_unconverted_version_is_a_404(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "m.pt"
    upload(owner_api, "cnn", path, signature=save_torchscript_cnn(path))

    response = owner_api.get("/api/v1/models/cnn/versions/1/artifacts/onnx/")

    assert response.status_code == 404
    assert "no ONNX artifact yet" in response.json()["message"]


def test_unknown_models_and_versions_are_404s_that_say_what_is_missing(owner_api: APIClient) -> None:
    create_model(owner_api)

    assert owner_api.get("/api/v1/models/nope/").json()["message"] == "no model named 'nope'"
    assert owner_api.get("/api/v1/models/cnn/versions/9/").status_code == 404
    assert "has no version 9" in owner_api.get("/api/v1/models/cnn/versions/9/").json()["message"]


def test_a_model_changed_while_another_request_deletes_it_is_a_404_not_a_500(owner_api: APIClient) -> None:
    from registry.errors import ModelNotFoundError
    from registry.services import update_model

    create_model(owner_api)
    model = RegisteredModel.objects.get(name="cnn")  # as the PATCH view read it
    RegisteredModel.objects.filter(pk=model.pk).delete()  # a DELETE committed meanwhile

    with pytest.raises(ModelNotFoundError, match="model 'cnn' was deleted"):
        update_model(model=model, actor=model.owner, description="x")
    assert not AuditEvent.objects.filter(action="model.updated").exists()


def test_models_list_is_paginated_filtered_and_does_a_fixed_number_of_queries(
    owner_api: APIClient, django_assert_max_num_queries: Any
) -> None:
    for index in range(12):
        create_model(owner_api, f"model-{index:02d}")
    owner_api.patch("/api/v1/models/model-03/", {"tags": ["nlp"]}, format="json")

    with django_assert_max_num_queries(8):
        page = owner_api.get("/api/v1/models/?page_size=5").json()
    tagged = owner_api.get("/api/v1/models/?tag=nlp").json()

    assert page["count"] == 12
    assert len(page["results"]) == 5
    assert [m["name"] for m in tagged["results"]] == ["model-03"]


def test_duplicate_and_invalid_model_names_are_refused(owner_api: APIClient) -> None:
    create_model(owner_api)

    duplicate = owner_api.post("/api/v1/models/", {"name": "cnn"})
    invalid = owner_api.post("/api/v1/models/", {"name": "Bad Name!"})

    assert duplicate.status_code == 409
    assert "exists already" in duplicate.json()["message"]
    assert invalid.status_code == 400
    assert "name" in invalid.json()["message"]


@pytest.mark.parametrize("name", ["-cnn", "cnn-", "Cnn", "c_nn", "ünï", "c--"])
def test_a_refused_name_is_told_the_whole_rule(owner_api: APIClient, name: str) -> None:
    """'-cnn' is made of lowercase letters and hyphens: the message says where they may not go."""
    refused = owner_api.post("/api/v1/models/", {"name": name}, format="json")

    assert refused.status_code == 400, refused.content
    assert refused.json()["message"] == f"name: {name!r} is not valid; {SLUG_RULE}"


def test_a_name_with_a_trailing_newline_is_no_slug() -> None:
    """``$`` matches before a final newline: the check matches the whole value."""
    assert slug_refusal("alias", "cnn") is None
    assert slug_refusal("alias", "cnn\n") == f"alias: 'cnn\\n' is not valid; {SLUG_RULE}"


@pytest.mark.parametrize("name", ["cnn\n", "-cnn", "a" * 65])
def test_the_name_fields_validator_matches_the_whole_value(django_user_model: Any, name: str) -> None:
    """What the admin's forms and ``full_clean`` check: the same rule, a trailing newline refused."""
    owner = django_user_model.objects.create_user("owner-v")
    RegisteredModel(name="cnn", owner=owner).full_clean()

    with pytest.raises(ValidationError) as refused:
        RegisteredModel(name=name, owner=owner).full_clean()

    assert "name" in refused.value.message_dict
