"""ONNX models beyond PyTorch's: classifiers as skl2onnx writes them (``label``, the class names
as strings, and a ZipMap's ``output_probability``, a sequence of {class: probability} maps, which
no inference protocol carries), and models that take strings. The platform serves the ZipMap's
tensor under the output's name, takes its class names as the version's labels, and carries
string tensors as the protocol's BYTES.

The graphs are built with ``onnx.helper`` the way skl2onnx builds them (``ai.onnx.ml`` operators,
which ONNX Runtime runs): no scikit-learn needed.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from rest_framework.test import APIClient

from inference_worker.contracts.labels import ClassLabels
from registry.conversion.inspection import inspect_onnx
from registry.models import ModelVersion
from tests.support.onnx_models import CLASSES, FEATURES, convert_upload, save_classifier
from tests.support.torch_models import save_torchscript_cnn
from tests.support.uploads import create_model, upload
from tests.support.workers import make_config, running, v2_body


def test_the_signature_serves_the_zipmaps_tensor_under_its_name(tmp_path: Path) -> None:
    path = tmp_path / "classifier.onnx"
    save_classifier(path)

    inspected = inspect_onnx(str(path))

    assert inspected["signature"]["outputs"] == [
        {"name": "label", "dtype": "string", "shape": [-1]},
        {"name": "output_probability", "dtype": "float32", "shape": [-1, 3]},
    ]
    assert inspected["class_labels"] == {"output_probability": CLASSES}


@pytest.mark.django_db
def test_an_uploaded_classifier_takes_the_zipmaps_class_names_as_its_labels(
    owner_api: APIClient, tmp_path: Path
) -> None:
    named, numbered = tmp_path / "named.onnx", tmp_path / "numbered.onnx"
    save_classifier(named)
    save_classifier(numbered, names=None)
    create_model(owner_api)

    first = upload(owner_api, "cnn", named)
    second = upload(owner_api, "cnn", numbered)
    own = upload(owner_api, "cnn", named, class_labels="a\nb\nc\n")

    assert first.status_code == 201, first.content
    assert first.json()["signature"]["outputs"][1]["shape"] == [-1, 3]
    versions = {v.version: v for v in ModelVersion.objects.all()}
    assert versions[1].class_labels == {"output_probability": CLASSES}
    assert second.status_code == 201, second.content
    assert versions[2].class_labels == {}  # 0, 1, 2 say nothing the index does not
    assert own.status_code == 201, own.content  # a list labels the first output that scores classes
    assert versions[3].class_labels == {"output_probability": ["a", "b", "c"]}


def test_a_converted_classifier_is_served_with_the_probabilities_the_maps_held(tmp_path: Path) -> None:
    source, output = tmp_path / "classifier.onnx", tmp_path / "converted.onnx"
    save_classifier(source)
    report = convert_upload(source, output)["report"]

    assert report["dynamic_batch"] is True
    assert any("output 'output_probability' is a ZipMap's sequence of maps" in w for w in report["warnings"])
    features = np.random.default_rng(1).standard_normal((5, FEATURES)).astype(np.float32)
    _, maps = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(
        None, {"float_input": features}
    )
    expected = np.array([[row[name] for name in CLASSES] for row in maps], dtype=np.float32)
    labels = ClassLabels({"output_probability": tuple(CLASSES)})
    with running(make_config(output, "iris", class_labels=labels)) as worker:
        answer = httpx.post(
            f"{worker.url}/v2/models/iris/infer", json=v2_body({"float_input": features}), timeout=30
        )
        top = httpx.post(
            f"{worker.url}/v2/models/iris/infer",
            json={
                **v2_body({"float_input": features[:1]}),
                "outputs": [{"name": "output_probability", "parameters": {"classification": 1}}],
            },
            timeout=30,
        )
    assert answer.status_code == 200, answer.text
    label, probabilities = answer.json()["outputs"]
    assert (label["datatype"], label["data"]) == ("BYTES", [CLASSES[i] for i in expected.argmax(axis=1)])
    np.testing.assert_allclose(np.asarray(probabilities["data"]).reshape(5, 3), expected, rtol=1e-6)
    assert top.status_code == 200, top.text
    (best,) = top.json()["outputs"][0]["data"]
    assert best.endswith(":" + CLASSES[int(expected[0].argmax())])


def _save_word_ids(path: Path) -> None:
    """A vocabulary lookup that takes text: the string tensor ``word`` to int64 ids (unknown: -1)."""
    node = helper.make_node(
        "LabelEncoder",
        ["word"],
        ["id"],
        domain="ai.onnx.ml",
        keys_strings=["word1", "word2", "word3"],
        values_int64s=[1, 2, 3],
        default_int64=-1,
    )
    graph = helper.make_graph(
        [node],
        "vocabulary",
        [helper.make_tensor_value_info("word", TensorProto.STRING, [None, 2])],
        [helper.make_tensor_value_info("id", TensorProto.INT64, [None, 2])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save_model(model, str(path))


def test_a_model_that_takes_strings_converts_and_a_worker_serves_it(tmp_path: Path) -> None:
    source, output = tmp_path / "vocabulary.onnx", tmp_path / "converted.onnx"
    _save_word_ids(source)
    result = convert_upload(source, output)
    signature, report = result["signature"], result["report"]

    assert signature["inputs"] == [{"name": "word", "dtype": "string", "shape": [-1, 2]}]
    assert report["parity"]["passed"] is True
    assert report["dynamic_batch"] is True
    assert report["protocols"]["per_request_ms"]["http_binary"] > 0
    words = np.array([["word2", "nope"], ["", "word3"]], dtype=object)
    with running(make_config(output, "vocabulary")) as worker:
        answer = httpx.post(
            f"{worker.url}/v2/models/vocabulary/infer", json=v2_body({"word": words}), timeout=30
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2, -1, -1, 3]


@pytest.mark.django_db
def test_a_torchscript_signature_that_declares_a_string_is_a_400(
    owner_api: APIClient, tmp_path: Path
) -> None:
    path = tmp_path / "cnn.pt"
    signature = save_torchscript_cnn(path)
    signature["inputs"][0]["dtype"] = "string"
    create_model(owner_api)

    response = upload(owner_api, "cnn", path, signature=signature)

    assert response.status_code == 400, response.content
    assert (
        "'image' is declared string, but a PyTorch model has no string tensors" in response.json()["message"]
    )
