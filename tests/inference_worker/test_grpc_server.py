"""The worker's own gRPC server (``grpc_server`` on ``h2_base``) with stock clients of every kind."""

from __future__ import annotations

import asyncio
import queue
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from inference_worker import build_protos
from tests.support.onnx_models import reference
from tests.support.workers import RunningWorker

pb2, pb2_grpc = build_protos.load()
RNG = np.random.default_rng(11)


def infer_request(x: np.ndarray, request_id: str = "") -> Any:
    request = pb2.ModelInferRequest(model_name="mlp", id=request_id, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    return request


def as_array(response: Any) -> np.ndarray:
    output = response.outputs[0]
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(output.shape))


def test_tritonclient_async_infer_and_liveness(mlp_worker: RunningWorker, models: SimpleNamespace) -> None:
    client = triton.InferenceServerClient(mlp_worker.grpc_target)
    assert client.is_server_live()
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    xs = [RNG.standard_normal((2, 4)).astype(np.float32) for _ in range(8)]
    for i, x in enumerate(xs):
        tensor = triton.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        client.async_infer(
            "mlp", [tensor], lambda result, error: answers.put((result, error)), request_id=str(i)
        )
    got = {}
    for _ in xs:
        result, error = answers.get(timeout=30)
        assert error is None
        got[result.get_response().id] = result.as_numpy("y")
    for i, x in enumerate(xs):
        np.testing.assert_allclose(got[str(i)], reference(models.mlp, {"x": x})[0], rtol=1e-5)
    client.close()


def test_a_grpc_aio_client_calls_unary_and_streams(
    mlp_worker: RunningWorker, models: SimpleNamespace
) -> None:
    xs = [RNG.standard_normal((1 + i % 4, 4)).astype(np.float32) for i in range(20)]

    async def scenario() -> tuple[Any, list[Any], Any]:
        async with grpc.aio.insecure_channel(mlp_worker.grpc_target) as channel:
            stub = pb2_grpc.GRPCInferenceServiceStub(channel)
            unary = await stub.ModelInfer(infer_request(xs[0], "u"), timeout=10)
            call = stub.ModelStreamInfer(
                iter([infer_request(x, str(i)) for i, x in enumerate(xs)]), timeout=10
            )
            streamed = [answer async for answer in call]
            metadata = await stub.ModelMetadata(pb2.ModelMetadataRequest(name="mlp"), timeout=10)
            return unary, streamed, metadata

    unary, streamed, metadata = asyncio.run(scenario())
    assert unary.id == "u"
    np.testing.assert_allclose(as_array(unary), reference(models.mlp, {"x": xs[0]})[0], rtol=1e-5)
    assert [answer.infer_response.id for answer in streamed] == [str(i) for i in range(len(xs))]
    for x, answer in zip(xs, streamed, strict=True):
        np.testing.assert_allclose(
            as_array(answer.infer_response), reference(models.mlp, {"x": x})[0], rtol=1e-5
        )
    assert metadata.name == "mlp"


def test_the_tritonclient_aio_stream_answers_as_requests_complete(mlp_worker: RunningWorker) -> None:
    async def scenario() -> list[str]:
        client = triton_aio.InferenceServerClient(mlp_worker.grpc_target)

        async def requests() -> Any:
            for i in range(5):
                tensor = triton_aio.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(np.full((1, 4), i, np.float32))
                yield {"model_name": "mlp", "inputs": [tensor], "request_id": f"s{i}"}

        ids = []
        async for result, error in client.stream_infer(requests()):
            assert error is None
            ids.append(result.get_response().id)
            if len(ids) == 5:
                break
        await client.close()
        return ids

    assert asyncio.run(scenario()) == [f"s{i}" for i in range(5)]


def test_unknown_methods_and_services_are_unimplemented(mlp_worker: RunningWorker) -> None:
    with grpc.insecure_channel(mlp_worker.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "NoSuchMethod" in caught.value.details()


def test_an_unparsable_request_message_is_internal(mlp_worker: RunningWorker) -> None:
    with grpc.insecure_channel(mlp_worker.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "could not be parsed" in caught.value.details()


def test_an_error_message_with_non_ascii_text_arrives_intact(mlp_worker: RunningWorker) -> None:
    client = triton.InferenceServerClient(mlp_worker.grpc_target)
    with pytest.raises(Exception, match="unknown model 'modèle%'") as caught:
        client.get_model_metadata("modèle%")
    assert "NOT_FOUND" in str(caught.value.status())  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (Debian: nghttp2-client)")
def test_h2load_drives_many_streams_on_few_connections(mlp_worker: RunningWorker, tmp_path: Path) -> None:
    body = tmp_path / "request"
    x = np.ones((1, 4), np.float32)
    payload = infer_request(x).SerializeToString()
    body.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)
    command = [
        "h2load", "-n2000", "-c4", "-m16", "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-d", str(body), f"http://{mlp_worker.grpc_target}/inference.GRPCInferenceService/ModelInfer",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    done = re.search(r"requests: 2000 total, 2000 started, 2000 done, (\d+) succeeded", out)
    assert done is not None, out
    assert done[1] == "2000", out
    assert "status codes: 2000 2xx" in out
