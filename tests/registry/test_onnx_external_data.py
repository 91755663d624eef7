"""ONNX uploads whose weights lie in a second file, as ``torch.onnx.export`` writes them by default:
the API takes the data file beside the model and stores one self-contained file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from rest_framework.test import APIClient

from registry import storage
from registry.models import ModelVersion
from tests.support.torch_models import IMAGE_SHAPE, save_onnx_as_exported_by_default, save_torchscript_cnn
from tests.support.uploads import assert_nothing_left, create_model

pytestmark = pytest.mark.django_db


def _upload(client: APIClient, path: Path, data: Path | None, **fields: Any) -> Any:
    with path.open("rb") as model:
        body: dict[str, Any] = {"file": model, **fields}
        if data is None:
            return client.post("/api/v1/models/cnn/versions/", body, format="multipart")
        with data.open("rb") as external:
            body["external_data"] = external
            return client.post("/api/v1/models/cnn/versions/", body, format="multipart")


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "model.onnx"
    return path, save_onnx_as_exported_by_default(path)


def test_a_model_and_its_external_data_are_stored_as_one_file(
    owner_api: APIClient, exported: tuple[Path, Path]
) -> None:
    path, data = exported
    create_model(owner_api)

    response = _upload(owner_api, path, data)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["source_format"] == "onnx"
    assert body["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, *IMAGE_SHAPE]}]
    stored = storage.resolve(ModelVersion.objects.get().source_path)
    assert body["source_sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert stored.stat().st_size > data.stat().st_size  # the weights are inside
    model = onnx.load(str(stored), load_external_data=False)
    assert not [t.name for t in model.graph.initializer if t.external_data]
    image = np.random.default_rng(0).standard_normal((1, *IMAGE_SHAPE)).astype(np.float32)
    cpu = ["CPUExecutionProvider"]
    expected = ort.InferenceSession(str(path), providers=cpu).run(None, {"image": image})[0]
    got = ort.InferenceSession(str(stored), providers=cpu).run(None, {"image": image})[0]
    np.testing.assert_array_equal(got, expected)


def test_the_same_model_and_data_uploaded_twice_with_if_exists_existing_is_one_version(
    owner_api: APIClient, exported: tuple[Path, Path]
) -> None:
    path, data = exported
    create_model(owner_api)

    first = _upload(owner_api, path, data, if_exists="existing")
    again = _upload(owner_api, path, data, if_exists="existing")

    assert (first.status_code, again.status_code) == (201, 200), again.content
    assert again.json()["version"] == first.json()["version"] == 1
    assert ModelVersion.objects.count() == 1


def test_the_model_without_its_data_file_is_told_to_send_it(
    owner_api: APIClient, exported: tuple[Path, Path]
) -> None:
    path, _ = exported
    create_model(owner_api)

    response = _upload(owner_api, path, None)

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "external_data_refused"
    message = response.json()["message"]
    assert "keeps its data in another file ('model.onnx.data'" in message
    assert "upload that file too as external_data" in message
    assert "external_data=False" in message
    assert_nothing_left()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "but the file uploaded has"),
        (lambda b: b + b"\0" * 7, None),  # more bytes than the tensors use: accepted
    ],
    ids=["truncated", "longer"],
)
def test_a_data_file_that_does_not_hold_the_tensors_is_refused_by_name(
    owner_api: APIClient, exported: tuple[Path, Path], tmp_path: Path, damage: Any, message: str | None
) -> None:
    path, data = exported
    other = tmp_path / "other.data"
    other.write_bytes(damage(data.read_bytes()))
    create_model(owner_api)

    response = _upload(owner_api, path, other)

    if message is None:
        assert response.status_code == 201, response.content
        return
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_artifact"
    assert message in response.json()["message"]
    assert "is it this model's data file?" in response.json()["message"]
    assert_nothing_left()


def test_a_data_file_beside_a_self_contained_model_or_torchscript_is_refused(
    owner_api: APIClient, exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = exported
    whole = tmp_path / "whole.onnx"
    onnx.save_model(onnx.load(str(exported[0])), str(whole))  # the data folded in by onnx itself
    scripted = tmp_path / "cnn.pt"
    signature = save_torchscript_cnn(scripted)
    create_model(owner_api)

    beside_whole = _upload(owner_api, whole, data)
    beside_script = _upload(owner_api, scripted, data, signature=json.dumps(signature))

    assert beside_whole.status_code == 400, beside_whole.content
    assert "the model keeps all its tensors inside it" in beside_whole.json()["message"]
    assert beside_script.status_code == 400, beside_script.content
    assert (
        "only an ONNX model keeps its data in another file; this is torchscript"
        in (beside_script.json()["message"])
    )
    assert ModelVersion.objects.count() == 0


def test_a_model_that_names_two_data_files_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [
                onnx.helper.make_node("Add", ["x", "a"], ["t"]),
                onnx.helper.make_node("Add", ["t", "b"], ["y"]),
            ],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 4])],
            [
                onnx.numpy_helper.from_array(np.ones(4, np.float32), "a"),
                onnx.numpy_helper.from_array(np.ones(4, np.float32), "b"),
            ],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    for tensor, place in zip(model.graph.initializer, ["one.bin", "two.bin"], strict=True):
        onnx.external_data_helper.set_external_data(tensor, place, offset=0, length=16)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    path, data = tmp_path / "model.onnx", tmp_path / "one.bin"
    path.write_bytes(model.SerializeToString())
    data.write_bytes(np.ones(4, np.float32).tobytes())
    create_model(owner_api)

    response = _upload(owner_api, path, data)

    assert response.status_code == 400, response.content
    assert "keeps its tensors in 2 files ('one.bin', 'two.bin')" in response.json()["message"]
    assert "all_tensors_to_one_file=True" in response.json()["message"]


def test_an_empty_data_file_is_a_400_naming_the_field(
    owner_api: APIClient, exported: tuple[Path, Path]
) -> None:
    path, data = exported
    data.write_bytes(b"")
    create_model(owner_api)

    response = _upload(owner_api, path, data)

    assert response.status_code == 400, response.content
    assert "external_data" in response.json()["message"]
    assert "empty" in response.json()["message"]
    assert_nothing_left()
