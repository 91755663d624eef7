"""The registry's web pages, driven like a browser would (CSRF checks on)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from registry.models import Alias, ModelVersion, RegisteredModel
from tests.support.torch_models import save_onnx_as_exported_by_default, save_torchscript_cnn
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def csrf_token(client: Client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert match, "form has no CSRF token"
    return match.group(1)


def new_digits_model(web: Client) -> None:
    web.post("/models/new/", {"name": "digits", "csrfmiddlewaretoken": csrf_token(web, "/models/new/")})


def upload_through_the_page(web: Client, path: Path, *, follow: bool = False, **fields: str) -> Any:
    token = csrf_token(web, "/models/digits/upload/")
    with path.open("rb") as handle:
        return web.post(
            "/models/digits/upload/", {"file": handle, **fields, "csrfmiddlewaretoken": token}, follow=follow
        )


def test_pages_need_a_login(client: Client) -> None:
    for url in ("/", "/models/new/", "/audit/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_a_name_that_is_not_a_slug_is_refused_with_the_rule_and_a_suggestion(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    web = web_as(owner)
    refused = web.post(
        "/models/new/", {"name": "My Model", "csrfmiddlewaretoken": csrf_token(web, "/models/new/")}
    )

    assert refused.status_code == 200
    assert refused.context["form"].errors["name"] == [
        "“My Model” is not a valid name: use 1-64 lowercase letters, digits and hyphens, "
        "starting and ending with a letter or digit (for example my-model)."
    ]
    assert not RegisteredModel.objects.exists()


def test_a_user_creates_a_model_uploads_a_version_and_promotes_it(
    owner: User, web_as: Callable[[User], Client], tmp_path: Path
) -> None:
    web = web_as(owner)
    created = web.post(
        "/models/new/",
        {
            "name": "digits",
            "description": "d",
            "tags": "vision, demo",
            "csrfmiddlewaretoken": csrf_token(web, "/models/new/"),
        },
    )
    assert created.status_code == 302
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)
    token = csrf_token(web, "/models/digits/upload/")

    with path.open("rb") as handle:
        uploaded = web.post(
            "/models/digits/upload/",
            {
                "file": handle,
                "signature": json.dumps(signature),
                "git_commit": "deadbeef",
                "ci_run_url": "https://ci.example.com/1",
                "csrfmiddlewaretoken": token,
            },
        )

    assert uploaded.status_code == 302
    assert uploaded["Location"] == "/models/digits/versions/1/"
    page = web.get("/models/digits/versions/1/").content.decode()
    assert "deadbeef" in page
    assert 'href="https://ci.example.com/1"' in page
    assert "image" in page  # the signature table
    ModelVersion.objects.update(status="ready")  # as the conversion leaves it
    promoted = web.post(
        "/models/digits/aliases/",
        {
            "alias": "production",
            "version": "1",
            "next": "/models/digits/versions/1/",
            "csrfmiddlewaretoken": csrf_token(web, "/models/digits/versions/1/"),
        },
    )
    assert promoted.status_code == 302
    assert Alias.objects.get(name="production").version.version == 1
    listing = web.get("/").content.decode()
    assert "production → v1" in listing
    assert RegisteredModel.objects.get().tags == ["demo", "vision"]


def test_uploading_the_same_bytes_again_says_so(
    owner: User, web_as: Callable[[User], Client], tmp_path: Path
) -> None:
    web = web_as(owner)
    new_digits_model(web)
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)
    pages = []
    for _ in range(2):
        answer = upload_through_the_page(web, path, follow=True, signature=json.dumps(signature))
        pages.append(answer.content.decode())

    assert "same bytes" not in pages[0]
    assert re.search(
        r"These are the same bytes as v1 \(sha256 [0-9a-f]{12}…\): v2 is a copy of it.", pages[1]
    )


def test_a_form_post_without_csrf_token_is_refused(
    owner: User, web_as: Callable[[User], Client], tmp_path: Path
) -> None:
    web = web_as(owner)
    new_digits_model(web)
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)

    with path.open("rb") as handle:
        response = web.post("/models/digits/upload/", {"file": handle, "signature": json.dumps(signature)})

    assert response.status_code == 403
    assert not ModelVersion.objects.exists()


def test_a_refused_upload_shows_the_reason_on_the_form(
    owner: User, web_as: Callable[[User], Client], tmp_path: Path
) -> None:
    web = web_as(owner)
    new_digits_model(web)
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a model\n")

    response = upload_through_the_page(web, path)

    assert response.status_code == 400
    assert "this is a text file, not a model" in response.content.decode()
    assert not ModelVersion.objects.exists()


def test_an_onnx_model_and_its_external_data_upload_through_the_page(
    owner: User, web_as: Callable[[User], Client], tmp_path: Path
) -> None:
    web = web_as(owner)
    new_digits_model(web)
    path = tmp_path / "model.onnx"
    data = save_onnx_as_exported_by_default(path)
    form = web.get("/models/digits/upload/").content.decode()

    alone = upload_through_the_page(web, path)
    token = csrf_token(web, "/models/digits/upload/")
    with path.open("rb") as graph, data.open("rb") as weights:
        both = web.post(
            "/models/digits/upload/",
            {"file": graph, "external_data": weights, "csrfmiddlewaretoken": token},
        )

    assert 'name="external_data"' in form
    assert alone.status_code == 400
    assert "upload that file too as external_data" in alone.content.decode()
    assert both.status_code == 302, both.content.decode()[:2000]
    assert ModelVersion.objects.get().source_format == "onnx"


def test_an_outsider_sees_models_but_no_upload_form(
    owner: User, outsider: User, web_as: Callable[[User], Client]
) -> None:
    RegisteredModel.objects.create(name="digits", owner=owner)
    web = web_as(outsider)

    page = web.get("/models/digits/")
    upload = web.get("/models/digits/upload/")

    assert page.status_code == 200
    assert "Upload version" not in page.content.decode()
    assert upload.status_code == 403
    assert "only the owner" in upload.content.decode()


def test_a_javascript_ci_url_is_shown_as_text_not_as_a_link(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    model = RegisteredModel.objects.create(name="digits", owner=owner, latest_version=1)
    ModelVersion.objects.create(
        model=model,
        version=1,
        source_format="onnx",
        source_sha256="0" * 64,
        source_size=1,
        source_path="sha256/00/" + "0" * 64,
        created_by=owner,
        metadata={"ci_run_url": "javascript:alert(1)"},
    )

    page = web_as(owner).get("/models/digits/versions/1/").content.decode()

    assert 'href="javascript:' not in page
    assert "javascript:alert(1)" in page


def test_the_latency_profile_says_at_which_length_a_sequence_input_ran(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    report = {
        "warmup": {"shapes": {"tokens": [-1, 8], "mask": [-1, 8], "image": [-1, 3, 32, 32]}},
        "profile": {
            "provider": "CPUExecutionProvider",
            "threads": 2,
            "batches": [{"batch_size": 1, "onnxruntime_ms": 0.02, "samples_per_s": 50000.0}],
        },
    }
    signature = {
        "inputs": [
            {"name": "tokens", "dtype": "int64", "shape": [-1, -1]},
            {"name": "mask", "dtype": "int64", "shape": [-1, "seq"]},
            {"name": "image", "dtype": "float32", "shape": [-1, 3, 32, 32]},
        ],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
    }
    ModelVersion.objects.filter(pk=ready_version(owner, model="texts", report=report).pk).update(
        signature=signature
    )

    page = web_as(owner).get("/models/texts/versions/1/").content.decode()

    assert (
        "2 threads, median of several runs; dynamic dimensions at tokens [batch, 8], mask [batch, 8]." in page
    )


def test_the_pages_take_a_versions_parity_tolerance_on_upload_and_on_convert_again(
    owner: User, web_as: Callable[[User], Client], tmp_path: Path
) -> None:
    web = web_as(owner)
    new_digits_model(web)
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)
    upload_through_the_page(web, path, signature=json.dumps(signature), parity_atol="0.001")
    version = ModelVersion.objects.get()
    assert (version.parity_atol, version.parity_rtol) == (0.001, None)
    ModelVersion.objects.filter(pk=version.pk).update(status="failed")
    page = "/models/digits/versions/1/"
    assert (
        'name="parity_atol" type="number" step="any" min="0" value="0.001"' in web.get(page).content.decode()
    )

    refused = web.post(
        f"{page}convert/", {"parity_rtol": "-1", "csrfmiddlewaretoken": csrf_token(web, page)}, follow=True
    )
    assert "Parity rtol: Ensure this value is greater than or equal to 0.0." in refused.content.decode()
    assert ModelVersion.objects.get().status == "failed"
    web.post(
        f"{page}convert/",
        {"parity_rtol": "0.05", "parity_atol": "", "csrfmiddlewaretoken": csrf_token(web, page)},
    )
    version.refresh_from_db()
    assert (version.status, version.parity_atol, version.parity_rtol) == ("registered", 0.001, 0.05)
