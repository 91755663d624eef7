"""A client generated from the served OpenAPI schema does a user's work, typed, with no hand edits.

openapi-python-client (the generator a Python team reaches for) writes a package from
``/api/schema/``; the test imports it and, against a live platform, creates a model, is refused a
bad name (the error body typed, its message the rule), uploads a TorchScript file (multipart),
pages the models list and is refused a page size out of bounds, points an alias, creates a
deployment with a nested variant, reads it (the gRPC target a typed field) and its split, and
reads a missing model's 404. Until the schema offered one media type per body, the generated
code did not import (``Unset``), then sent every JSON body as multipart with a boundary of its
own and could not send a deployment's variants at all.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User

from accounts.tokens import create_api_token
from registry.models import SLUG_RULE
from tests.support.torch_models import save_onnx_as_exported_by_default, save_torchscript_cnn
from tests.support.versions import stored_version

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.django_db(transaction=True)]

PACKAGE = "kiln_model_platform_api_client"  # from the schema's title


@pytest.fixture
def generated(staff: User, live_server: Any, tmp_path: Path) -> Iterator[tuple[ModuleType, Any]]:
    """The generated package, and a client of it authenticated as ``staff`` against the live server."""
    token = create_api_token(user=staff)
    served = httpx.get(
        f"{live_server.url}/api/schema/?format=json",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    assert served.status_code == 200, served.text[:500]
    (tmp_path / "openapi.json").write_text(served.text)
    out = tmp_path / PACKAGE  # --meta none writes the bare package to --output-path
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", "openapi.json", "--meta", "none",
         "--output-path", str(out)],
        cwd=tmp_path, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        package = importlib.import_module(PACKAGE)
        with package.AuthenticatedClient(base_url=live_server.url, token=token) as client:  # closes its pool
            yield package, client
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.v1.{name}")


def test_a_generated_client_registers_uploads_and_deploys(
    generated: tuple[ModuleType, Any], staff: User, tmp_path: Path
) -> None:
    _, client = generated
    models = importlib.import_module(f"{PACKAGE}.models")
    files = importlib.import_module(f"{PACKAGE}.types")
    stored_version(staff, tmp_path)  # model cnn, version 1 converted

    created = _api("v1_models_create").sync_detailed(
        client=client, body=models.ModelCreateInputRequest(name="digits", description="typed")
    )
    assert created.status_code == 201, created.content
    assert isinstance(created.parsed, models.ModelOutput)
    assert created.parsed.name == "digits"

    refused = _api("v1_models_create").sync_detailed(
        client=client, body=models.ModelCreateInputRequest(name="-x")
    )
    assert refused.status_code == 400
    assert isinstance(refused.parsed, models.ErrorOutput)
    assert refused.parsed.message == f"name: '-x' is not valid; {SLUG_RULE}"

    model_file = tmp_path / "digits.pt"
    signature = save_torchscript_cnn(model_file)
    with model_file.open("rb") as payload:
        upload = models.VersionUploadInputRequest(
            file=files.File(payload=payload, file_name="digits.pt"), signature=json.dumps(signature)
        )
        uploaded = _api("v1_models_versions_create").sync_detailed("digits", client=client, body=upload)
    assert uploaded.status_code == 201, uploaded.content
    assert isinstance(uploaded.parsed, models.VersionUploadOutput)
    assert (uploaded.parsed.model, uploaded.parsed.version) == ("digits", 1)
    assert uploaded.parsed.source_format == "torchscript"
    exported = tmp_path / "digits.onnx"  # torch.onnx.export's defaults: the weights in digits.onnx.data
    data = save_onnx_as_exported_by_default(exported)
    with exported.open("rb") as graph, data.open("rb") as weights:
        upload = models.VersionUploadInputRequest(
            file=files.File(payload=graph, file_name=exported.name),
            external_data=files.File(payload=weights, file_name=data.name),
        )
        folded = _api("v1_models_versions_create").sync_detailed("digits", client=client, body=upload)
    assert folded.status_code == 201, folded.content
    assert (folded.parsed.version, folded.parsed.source_format) == (2, "onnx")

    page = _api("v1_models_list").sync(client=client, page_size=1)
    assert (page.count, len(page.results)) == (2, 1)
    too_big = _api("v1_models_list").sync_detailed(client=client, page_size=501)
    assert too_big.status_code == 400
    assert too_big.parsed.message.startswith("page_size: ")

    alias = _api("v1_models_aliases_update").sync_detailed(
        "cnn", "production", client=client, body=models.AliasInputRequest(version=1)
    )
    assert alias.status_code == 200, alias.content
    assert alias.parsed.version == 1

    body = models.DeploymentCreateInputRequest(
        name="web", model="cnn", variants=[models.VariantInputRequest(name="primary", alias="production")]
    )
    deployed = _api("v1_deployments_create").sync_detailed(client=client, body=body)
    assert deployed.status_code == 201, deployed.content
    assert isinstance(deployed.parsed, models.DeploymentOutput)
    assert [v.name for v in deployed.parsed.variants] == ["primary"]

    deployment = _api("v1_deployments_retrieve").sync("web", client=client)
    assert deployment.endpoint.infer.endswith("/v2/models/web/infer")
    assert deployment.endpoint.grpc  # a field of the schema, not an undeclared extra
    assert deployment.endpoint.additional_properties == {}
    traffic = _api("v1_deployments_traffic_retrieve").sync("web", client=client)
    assert traffic.split.to_dict() == {"primary": {"weight": 100, "shadow_percent": 0}}

    missing = _api("v1_models_retrieve").sync_detailed("does-not-exist", client=client)
    assert missing.status_code == 404
    assert missing.parsed.message == "no model named 'does-not-exist'"
