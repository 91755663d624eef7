"""The stock tritonclient HTTP client, unchanged, against the worker: JSON and binary."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import reference
from tests.support.workers import RunningWorker, make_config, running


@pytest.fixture(scope="module")
def client(mlp_worker: RunningWorker) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(mlp_worker.url.removeprefix("http://"))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_inference_matches_onnx_runtime(
    client: triton.InferenceServerClient, models: SimpleNamespace, binary: bool
) -> None:
    x = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    tensor = triton.InferInput("x", [6, 4], "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("mlp", [tensor], outputs=[triton.InferRequestedOutput("y", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("y"), reference(models.mlp, {"x": x})[0], rtol=1e-5)


def test_tritonclient_http_without_requested_outputs_gets_binary_outputs(
    client: triton.InferenceServerClient,
) -> None:
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    result = client.infer("mlp", [tensor])
    assert result.as_numpy("y").shape == (1, 3)
    assert result.get_output("y")["parameters"]["binary_data_size"] == 12


def test_tritonclient_http_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.get_model_metadata("mlp")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_server_metadata()["name"] == "kiln-inference-worker"


def test_tritonclient_http_sees_the_error_message(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("x", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mlp", [tensor])
    assert caught.value.status() == "400"
    assert caught.value.message() == "input 'x' has shape [1, 5]; the model takes [-1, 4]"


def test_tritonclient_http_multi_input_bytes_and_ints(models: SimpleNamespace) -> None:
    with running(make_config(models.two_inputs, "pair")) as worker:
        client = triton.InferenceServerClient(worker.url.removeprefix("http://"))
        a = np.ones((2, 2), np.float32)
        b = np.array([[1, 2], [3, 4]], np.int64)
        inputs = [triton.InferInput("a", [2, 2], "FP32"), triton.InferInput("b", [2, 2], "INT64")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b, binary_data=False)
        result = client.infer("pair", inputs)
        np.testing.assert_allclose(result.as_numpy("sum"), a + b)
    with running(make_config(models.strings, "echo")) as worker:
        client = triton.InferenceServerClient(worker.url.removeprefix("http://"))
        words = np.array([b"alpha", b"", b"gamma"], dtype=object)
        tensor = triton.InferInput("s", [3], "BYTES")
        tensor.set_data_from_numpy(words)
        assert client.infer("echo", [tensor]).as_numpy("t").tolist() == [b"alpha", b"", b"gamma"]
