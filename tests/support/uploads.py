"""Registering models and uploading versions through the REST API, as a CI pipeline would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from rest_framework.test import APIClient

from registry.models import AuditEvent, ModelVersion


def create_model(client: APIClient, name: str = "cnn") -> Any:
    response = client.post(
        "/api/v1/models/", {"name": name, "description": "a small CNN", "tags": ["vision"]}
    )
    assert response.status_code == 201, response.content
    return response.json()


def upload(client: APIClient, name: str, path: Path, **fields: Any) -> Any:
    with path.open("rb") as handle:
        data = {"file": handle, **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()}}
        return client.post(f"/api/v1/models/{name}/versions/", data, format="multipart")


def stored_files() -> list[Path]:
    root = Path(settings.KILN_ARTIFACT_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def assert_nothing_left() -> None:
    assert not ModelVersion.objects.exists()
    assert not AuditEvent.objects.filter(action="version.registered").exists()
    assert stored_files() == []
