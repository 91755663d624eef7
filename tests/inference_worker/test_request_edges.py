"""Requests at the protocol's edges on real workers, over HTTP (JSON and binary) and gRPC: shapes
without elements, BYTES data nested as its shape, an empty list of requested outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper

from inference_worker import build_protos
from tests.support.onnx_models import reference
from tests.support.workers import RunningWorker, make_config, running

pb2, pb2_grpc = build_protos.load()
HUGE_AND_EMPTY = [1, 1 << 62, 1 << 62, 0]
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def tagged(path: Path) -> Path:
    """s STRING [batch, 1] -> t = s, x FP32 [batch, 2] -> y = x (Identity both)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"]), helper.make_node("Identity", ["x"], ["y"])],
        "tagged",
        [
            helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 1]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", 1]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tagged_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    path = tagged(tmp_path_factory.mktemp("tagged") / "tagged.onnx")
    with running(make_config(path, "tagged")) as worker:
        yield worker


def binary_body(header: dict[str, Any], tail: bytes = b"") -> tuple[bytes, dict[str, str]]:
    encoded = orjson.dumps(header)
    return encoded + tail, {"Inference-Header-Content-Length": str(len(encoded))}


# -- a shape without elements still has its dimensions bounded -----------------------------------
IRREGULAR = "data is not a regular nesting of lists at most as deep as its shape"
SHAPE_REFUSAL = "its other dimensions hold 21267647932558653966460912964485513216 elements, past the limit"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_shape_without_elements_but_huge_dimensions_is_a_400_over_http(
    mlp_worker: RunningWorker, binary: bool
) -> None:
    tensor: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": HUGE_AND_EMPTY}
    if binary:
        body, headers = binary_body({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]})
        answer = httpx.post(f"{mlp_worker.url}/v2/models/mlp/infer", content=body, headers=headers)
    else:
        answer = httpx.post(
            f"{mlp_worker.url}/v2/models/mlp/infer", json={"inputs": [{**tensor, "data": []}]}
        )

    assert answer.status_code == 400
    assert SHAPE_REFUSAL in answer.json()["error"]
    assert httpx.post(f"{mlp_worker.url}/v2/models/mlp/infer", json=v2(X)).status_code == 200


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_a_shape_without_elements_but_huge_dimensions_is_invalid_argument_over_grpc(
    mlp_worker: RunningWorker, raw: bool
) -> None:
    request = pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[b""] if raw else [])
    request.inputs.add(name="x", datatype="FP32", shape=HUGE_AND_EMPTY)

    with grpc.insecure_channel(mlp_worker.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
        pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert SHAPE_REFUSAL in (caught.value.details() or "")


# -- BYTES data nested as its shape --------------------------------------------------------------
@pytest.mark.parametrize(
    ("strings", "x"),
    [([["a"], ["b"]], [[1, 2], [3, 4]]), ([["a"]], [[1, 2]]), (["a", "b"], [1, 2, 3, 4])],
    ids=["nested [2, 1]", "nested [1, 1]", "flat [2, 1]"],
)
def test_bytes_data_nested_as_its_shape_is_taken_as_flat_data_is(
    tagged_worker: RunningWorker, strings: list[Any], x: list[Any]
) -> None:
    rows = len(strings)
    body = {
        "inputs": [
            {"name": "s", "datatype": "BYTES", "shape": [rows, 1], "data": strings},
            {"name": "x", "datatype": "FP32", "shape": [rows, 2], "data": x},
        ],
        "outputs": [{"name": "t"}],
    }

    answer = httpx.post(f"{tagged_worker.url}/v2/models/tagged/infer", json=body)

    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert (output["shape"], output["data"]) == ([rows, 1], ["a", "b"][:rows])


def test_kserve_v1_instances_holding_strings_nested_as_the_input_are_taken(
    tagged_worker: RunningWorker,
) -> None:
    instances = [{"s": ["a"], "x": [1, 2]}, {"s": ["b"], "x": [3, 4]}]

    answer = httpx.post(f"{tagged_worker.url}/v1/models/tagged:predict", json={"instances": instances})

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [{"t": ["a"], "y": [1, 2]}, {"t": ["b"], "y": [3, 4]}]}


def test_bytes_data_nested_unlike_its_shape_is_still_a_400(tagged_worker: RunningWorker) -> None:
    body = {
        "inputs": [
            {"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], "b"]},
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]},
        ]
    }

    answer = httpx.post(f"{tagged_worker.url}/v2/models/tagged/infer", json=body)

    assert answer.status_code == 400
    assert answer.json()["error"] == f"input 's': {IRREGULAR}"


# -- an empty list of requested outputs asks for all of them -------------------------------------
def v2(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}
    return {"inputs": [tensor], **extra}


def test_an_empty_outputs_list_answers_every_output_in_json(
    mlp_worker: RunningWorker, models: SimpleNamespace
) -> None:
    answer = httpx.post(f"{mlp_worker.url}/v2/models/mlp/infer", json=v2(X, outputs=[]))

    assert answer.status_code == 200
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["shape"]) == ("y", [2, 3])
    np.testing.assert_allclose(output["data"], reference(models.mlp, {"x": X})[0].reshape(-1), rtol=1e-5)


def test_an_empty_outputs_list_answers_every_output_in_binary(
    mlp_worker: RunningWorker, models: SimpleNamespace
) -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}}
    header = {"inputs": [tensor], "outputs": [], "parameters": {"binary_data_output": True}}
    body, headers = binary_body(header, X.tobytes())

    answer = httpx.post(f"{mlp_worker.url}/v2/models/mlp/infer", content=body, headers=headers)

    assert answer.status_code == 200
    size = int(answer.headers["Inference-Header-Content-Length"])
    (output,) = orjson.loads(answer.content[:size])["outputs"]
    assert (output["name"], output["shape"], output["parameters"]) == ("y", [2, 3], {"binary_data_size": 24})
    y = np.frombuffer(answer.content[size:], np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, reference(models.mlp, {"x": X})[0], rtol=1e-5)
