"""Hostile values in bodies and query strings: a 4xx JSON naming the field, never a 500 or a reset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from accounts.tokens import create_api_token
from registry.models import ModelVersion, RegisteredModel
from tests.support.torch_models import save_onnx_cnn
from tests.support.uploads import create_model, upload
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def upload_with(client: APIClient, tmp_path: Path, **fields: str) -> Any:
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    with path.open("rb") as handle:
        return client.post("/api/v1/models/cnn/versions/", {"file": handle, **fields}, format="multipart")


@pytest.mark.parametrize(
    ("metadata", "where", "what"),
    [
        ('{"x": NaN}', "metadata.x", "NaN is not a JSON number"),
        ('{"runs": [1, Infinity]}', "metadata.runs[1]", "Infinity is not a JSON number"),
        ('{"x": -Infinity}', "metadata.x", "-Infinity is not a JSON number"),
        ('{"x": 1e999}', "metadata.x", "out of range"),
        ('{"x": "a\\u0000b"}', "metadata.x", "NUL characters are not allowed"),
        ('{"a\\u0000": 1}', "metadata", "NUL characters are not allowed in keys"),
    ],
)
def test_metadata_that_json_or_postgresql_refuses_is_a_400_naming_the_spot(
    owner_api: APIClient, tmp_path: Path, metadata: str, where: str, what: str
) -> None:
    create_model(owner_api)

    response = upload_with(owner_api, tmp_path, metadata=metadata)

    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith(f"{where}: {what}")
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"name": "m", "tags": [NaN]}', "tags[0]: NaN"),
        (b'{"name": "m", "description": "x", "tags": ["a\\u0000"]}', "tags[0]: NUL"),
        (b'{"name": "m\\u0000"}', "name: NUL"),
    ],
)
def test_json_bodies_with_nan_or_nul_are_a_400_naming_the_field(
    owner_api: APIClient, body: bytes, where: str
) -> None:
    response = owner_api.post("/api/v1/models/", body, content_type="application/json")

    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith(where)
    assert not RegisteredModel.objects.exists()


def test_a_nul_in_a_variants_device_is_a_400_naming_it(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)
    body = {"name": "web", "model": "cnn", "variants": [{"version": 1, "device": {"cuda\x00": 1}}]}

    response = owner_api.post("/api/v1/deployments/", json.dumps(body), content_type="application/json")

    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith("variants[0].device: NUL")


def test_fields_over_their_size_limit_are_a_413_naming_the_limit(
    owner_api: APIClient, tmp_path: Path
) -> None:
    create_model(owner_api)

    metadata = upload_with(owner_api, tmp_path, metadata=json.dumps({"x": "y" * 40_000}))
    name = owner_api.post("/api/v1/models/", {"name": "m" * 65}, format="json")

    assert metadata.status_code == 413, metadata.content
    assert metadata.json()["code"] == "too_large"
    assert metadata.json()["message"] == "metadata: Ensure this field has no more than 32768 characters."
    assert name.status_code == 413
    assert "no more than 64 characters" in name.json()["message"]
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("size", [3 * 1024 * 1024, 8 * 1024 * 1024])
def test_a_huge_form_field_or_json_body_gets_a_413_over_a_real_connection(
    owner: User, live_server: Any, tmp_path: Path, size: int
) -> None:
    headers = {"Authorization": f"Bearer {create_api_token(user=owner)}"}
    RegisteredModel.objects.create(name="cnn", owner=owner)
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)

    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as client:
        form = client.post(
            "/api/v1/models/cnn/versions/",
            files={"file": ("model.onnx", path.read_bytes())},
            data={"metadata": "x" * size},
        )
        body = client.post("/api/v1/models/", json={"name": "big", "description": "d" * size})
        after = client.get("/api/v1/models/cnn/")  # the same connection still works

    for response in (form, body):
        assert response.status_code == 413, response.text[:300]
        assert response.headers["content-type"] == "application/json"
        assert response.json()["code"] == "too_large"
        assert "limit of 2097152 bytes" in response.json()["message"]
    assert after.status_code == 200
    assert not ModelVersion.objects.exists()


HOSTILE_QUERIES = [
    ("/api/v1/audit-events/", "model"),
    ("/api/v1/audit-events/", "subject"),
    ("/api/v1/audit-events/", "action"),
    ("/api/v1/models/", "search"),
    ("/api/v1/models/", "tag"),
    ("/api/v1/deployments/", "model"),
    ("/api/v1/models/cnn/versions/", "status"),
    ("/api/v1/models/", "page"),
]


@pytest.mark.parametrize(("path", "parameter"), HOSTILE_QUERIES)
@pytest.mark.parametrize(("value", "what"), [("%00", "NUL characters"), ("x" * 2000, "longer than 1024")])
def test_a_hostile_query_parameter_is_a_400_json_naming_it(
    owner_api: APIClient, path: str, parameter: str, value: str, what: str
) -> None:
    create_model(owner_api)

    response = owner_api.get(f"{path}?{parameter}={value}")

    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith(f"{parameter}: {what}")
    assert response.json()["extra"] == {"fields": {parameter: [response.json()["message"]]}}


def test_a_nul_in_the_web_audit_pages_filter_is_a_400_page(owner: User, web_as: Any) -> None:
    client: Client = web_as(owner)

    response = client.get("/audit/?model=%00")

    assert response.status_code == 400
    assert response["content-type"].startswith("text/html")
    assert "model: NUL characters are not allowed" in response.content.decode()


def test_an_unknown_api_path_is_a_json_404(owner_api: APIClient, anonymous_api: APIClient) -> None:
    for client in (owner_api, anonymous_api):
        response = client.get("/api/v1/no-such-thing/")

        assert response.status_code == 404
        assert response["content-type"] == "application/json"
        assert response.json()["code"] == "not_found"
        assert "/api/v1/no-such-thing/" in response.json()["message"]


@pytest.mark.django_db
def test_metadata_over_its_limit_is_a_413_naming_the_limit(owner_api: APIClient, tmp_path: Path) -> None:
    create_model(owner_api)
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)

    answer = upload(owner_api, "cnn", path, metadata={"notes": "n" * 17_000})

    assert answer.status_code == 413, answer.content
    assert answer.json()["code"] == "too_large"
    assert answer.json()["message"].startswith("metadata: ")
    assert answer.json()["extra"]["limit"] == 16 * 1024
    assert not ModelVersion.objects.exists()
