"""Triton's classification extension: ``class_count`` from the stock tritonclient, HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from onnx import TensorProto, helper

from inference_worker import build_protos
from inference_worker.classification import classify
from inference_worker.contracts.labels import ClassLabels, labels_text, parse_labels_text
from tests.support.onnx_models import reference
from tests.support.shm import client_region, client_shm, shm_client, with_shared_memory
from tests.support.workers import RunningWorker, make_config, running

pb2, pb2_grpc = build_protos.load()
X = np.random.default_rng(11).standard_normal((5, 4)).astype(np.float32)


def expected(models: SimpleNamespace, count: int) -> list[list[int]]:
    """The indices of each row's ``count`` highest outputs of the model, highest first."""
    y = reference(models.mlp, {"x": X})[0]
    return [list(np.argsort(-row, kind="stable")[:count]) for row in y]


def indices(classes: np.ndarray) -> list[list[int]]:
    """The class indices of an answer (bytes from binary or gRPC, strings from JSON)."""
    return [[int(_text(item).split(":")[1]) for item in row] for row in classes]


def _text(item: bytes | str) -> str:
    return item.decode() if isinstance(item, bytes) else item


def test_each_row_gives_its_top_values_as_value_colon_index() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [3.0, -1.0, 2.5]], np.float32)

    top = classify(scores, 2)

    assert top.shape == (2, 2)
    assert top.tolist() == [[b"0.700000:1", b"0.200000:2"], [b"3.000000:0", b"2.500000:2"]]


def test_ties_keep_index_order_nan_ranks_last_and_a_large_count_is_cut_to_the_row() -> None:
    scores = np.array([[1.0, np.nan, 1.0, 0.5]], np.float32)

    assert classify(scores, 10).tolist() == [[b"1.000000:0", b"1.000000:2", b"0.500000:3", b"nan:1"]]


def test_integer_outputs_are_written_as_integers_and_a_row_is_flattened() -> None:
    counts = np.array([[[0, 9], [4, 200]]], np.uint8)  # one row of 2x2: indices 0-3 in C order

    assert classify(counts, 3).tolist() == [[b"200:3", b"9:1", b"4:2"]]


def test_rows_without_elements_give_rows_without_classes() -> None:
    assert classify(np.zeros((2, 0), np.float32), 3).shape == (2, 0)
    assert classify(np.zeros((0, 4), np.float32), 3).shape == (0, 3)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_class_count_gets_the_top_classes(
    mlp_worker: RunningWorker, models: SimpleNamespace, binary: bool
) -> None:
    client = triton_http.InferenceServerClient(mlp_worker.url.removeprefix("http://"))
    tensor = triton_http.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    asked = triton_http.InferRequestedOutput("y", binary_data=binary, class_count=2)

    result = client.infer("mlp", [tensor], outputs=[asked])

    assert result.get_output("y")["datatype"] == "BYTES"
    classes = result.as_numpy("y")
    assert classes.shape == (5, 2)
    assert indices(classes) == expected(models, 2)
    y = reference(models.mlp, {"x": X})[0]
    value, index = _text(classes[0][0]).split(":")
    assert float(value) == pytest.approx(float(y[0][int(index)]), abs=1e-5)


def test_tritonclient_grpc_class_count_gets_the_top_classes(
    mlp_worker: RunningWorker, models: SimpleNamespace
) -> None:
    client = triton_grpc.InferenceServerClient(mlp_worker.grpc_target)
    tensor = triton_grpc.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)

    result = client.infer("mlp", [tensor], outputs=[triton_grpc.InferRequestedOutput("y", class_count=3)])

    classes = result.as_numpy("y")
    assert classes.shape == (5, 3)
    assert indices(classes) == expected(models, 3)
    assert "classification" in client.get_server_metadata(as_json=True)["extensions"]


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (0, "'classification' must be a positive integer"),
        ("2", "'classification' must be a positive integer"),
        (True, "'classification' must be a positive integer"),
        (1.5, "'classification' must be a positive integer"),
    ],
)
def test_a_class_count_that_is_no_positive_integer_is_a_400(
    mlp_worker: RunningWorker, count: object, message: str
) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "y", "parameters": {"classification": count}}],
    }

    answer = httpx.post(f"{mlp_worker.url}/v2/models/mlp/infer", json=body)

    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_classification_of_a_bytes_output_is_refused_over_both_protocols(models: SimpleNamespace) -> None:
    with running(make_config(models.strings, "echo")) as worker:
        body = {
            "inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
            "outputs": [{"name": "t", "parameters": {"classification": 1}}],
        }
        answer = httpx.post(f"{worker.url}/v2/models/echo/infer", json=body)
        assert answer.status_code == 400
        assert answer.json()["error"] == "output 't' is BYTES; classification takes a numeric output"

        client = triton_grpc.InferenceServerClient(worker.grpc_target)
        tensor = triton_grpc.InferInput("s", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"a"], dtype=object))
        with pytest.raises(triton_grpc.InferenceServerException, match="classification takes a numeric"):
            client.infer("echo", [tensor], outputs=[triton_grpc.InferRequestedOutput("t", class_count=1)])


def test_a_class_with_a_label_carries_it_and_one_past_the_labels_does_not() -> None:
    scores = np.array([[0.1, 0.7, 0.2]], np.float32)

    assert classify(scores, 3, ("cat", "dog:husky")).tolist() == [
        [b"0.700000:1:dog:husky", b"0.200000:2", b"0.100000:0:cat"]
    ]


def test_a_worker_with_class_labels_answers_them_over_both_protocols(models: SimpleNamespace) -> None:
    width = reference(models.mlp, {"x": X})[0].shape[1]
    names = tuple(f"class-{i} é" for i in range(width))
    labels = parse_labels_text(labels_text(ClassLabels({"y": names})))  # as the launch spec carries them
    with running(make_config(models.mlp, class_labels=labels)) as worker:
        http = triton_http.InferenceServerClient(worker.url.removeprefix("http://"))
        tensor = triton_http.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X, binary_data=False)
        asked = triton_http.InferRequestedOutput("y", binary_data=False, class_count=2)
        over_http = http.infer("mlp", [tensor], outputs=[asked]).as_numpy("y")

        grpc = triton_grpc.InferenceServerClient(worker.grpc_target)
        tensor = triton_grpc.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        asked = triton_grpc.InferRequestedOutput("y", class_count=2)
        over_grpc = grpc.infer("mlp", [tensor], outputs=[asked]).as_numpy("y")

    for classes in (over_http, over_grpc):
        assert indices(classes) == expected(models, 2)
        assert [[_text(item).split(":", 2)[2] for item in row] for row in classes] == [
            [names[i] for i in row] for row in expected(models, 2)
        ]


def test_an_output_without_a_batch_dimension_is_ranked_whole_as_one_row() -> None:
    scores = np.array([[0.1, 0.7], [0.2, 0.9]], np.float32)

    assert classify(scores, 3, batched=False).tolist() == [b"0.900000:3", b"0.700000:1", b"0.200000:2"]
    assert classify(scores, 9, ("a", "b", "c", "d"), batched=False).shape == (4,)
    assert classify(np.array(2.5, np.float32), 3, batched=False).tolist() == [b"2.500000:0"]
    assert classify(np.zeros(0, np.float32), 3, batched=False).shape == (0,)


STATIC_X = np.array([[3, 9, 1], [0, 5, 2]], np.float32)
"""The static model's input (no batch dimension): it answers 2x, whose top 3 are 18, 10 and 6."""
STATIC_TOP = ["18.000000:1:nine", "10.000000:4", "6.000000:0:three"]


@pytest.fixture(scope="module")
def static_worker(models: SimpleNamespace) -> Iterator[RunningWorker]:
    labels = ClassLabels({"y": ("three", "nine")})
    with running(with_shared_memory(make_config(models.static, "static", class_labels=labels))) as worker:
        yield worker


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_an_output_without_a_batch_dimension_is_classified_whole_over_http(
    static_worker: RunningWorker, binary: bool
) -> None:
    client = triton_http.InferenceServerClient(static_worker.url.removeprefix("http://"))
    tensor = triton_http.InferInput("x", [2, 3], "FP32")
    tensor.set_data_from_numpy(STATIC_X, binary_data=binary)
    asked = triton_http.InferRequestedOutput("y", binary_data=binary, class_count=3)

    result = client.infer("static", [tensor], outputs=[asked])

    assert result.get_output("y")["shape"] == [3]
    assert [_text(item) for item in result.as_numpy("y")] == STATIC_TOP


def test_an_output_without_a_batch_dimension_is_classified_whole_over_grpc(
    static_worker: RunningWorker,
) -> None:
    client = triton_grpc.InferenceServerClient(static_worker.grpc_target)
    tensor = triton_grpc.InferInput("x", [2, 3], "FP32")
    tensor.set_data_from_numpy(STATIC_X)
    asked = triton_grpc.InferRequestedOutput("y", class_count=3)

    result = client.infer("static", [tensor], outputs=[asked])

    assert list(result.get_output("y").shape) == [3]
    assert [_text(item) for item in result.as_numpy("y")] == STATIC_TOP


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_output_without_a_batch_dimension_is_classified_whole_into_shared_memory(
    static_worker: RunningWorker, protocol: str
) -> None:
    """tritonclient refuses a classified output in shared memory on its side: the requests are raw."""
    size = sum(4 + len(item) for item in STATIC_TOP)
    with shm_client(static_worker) as client, client_region("classes", size) as (key, handle):
        client.register_system_shared_memory("classes", key, size)
        window = {"shared_memory_region": "classes", "shared_memory_byte_size": size}
        if protocol == "http":
            tensor = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": STATIC_X.tolist()}
            asked = {"name": "y", "parameters": {"classification": 3, **window}}
            url = f"{static_worker.url}/v2/models/static/infer"
            answer = httpx.post(url, json={"inputs": [tensor], "outputs": [asked]})
            assert answer.status_code == 200, answer.text
            shape = answer.json()["outputs"][0]["shape"]
        else:
            request = pb2.ModelInferRequest(model_name="static", raw_input_contents=[STATIC_X.tobytes()])
            request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
            output = request.outputs.add(name="y")
            output.parameters["classification"].int64_param = 3
            output.parameters["shared_memory_region"].string_param = "classes"
            output.parameters["shared_memory_byte_size"].int64_param = size
            with grpc.insecure_channel(static_worker.grpc_target) as channel:
                shape = pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request).outputs[0].shape

        assert list(shape) == [3]
        written = client_shm.get_contents_as_numpy(handle, np.object_, [3])
        assert [_text(item) for item in written] == STATIC_TOP


def test_a_scalar_output_is_classified_as_its_one_class(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "scalar.onnx")
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [], "data": [1.25]}],
        "outputs": [{"name": "y", "parameters": {"classification": 3}}],
    }
    with running(make_config(tmp_path / "scalar.onnx", "scalar")) as worker:
        answer = httpx.post(f"{worker.url}/v2/models/scalar/infer", json=body)

        client = triton_grpc.InferenceServerClient(worker.grpc_target)
        tensor = triton_grpc.InferInput("x", [], "FP32")
        tensor.set_data_from_numpy(np.array(1.25, np.float32))
        asked = triton_grpc.InferRequestedOutput("y", class_count=3)
        over_grpc = client.infer("scalar", [tensor], outputs=[asked])

    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert (output["datatype"], output["shape"], output["data"]) == ("BYTES", [1], ["2.500000:0"])
    assert list(over_grpc.get_output("y").shape) == [1]
    assert over_grpc.as_numpy("y").tolist() == [b"2.500000:0"]
