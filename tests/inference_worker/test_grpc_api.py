"""The v2 gRPC service, its streaming extension and gRPC health, on real workers."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from inference_worker import build_protos
from inference_worker.config import DynamicBatching, Limits
from tests.support.onnx_models import reference
from tests.support.polling import wait_for
from tests.support.workers import (
    BIG_K,
    LONGEST_DELAY_US,
    RunningWorker,
    make_config,
    occupy,
    running,
    v2_body,
    wait_queued,
)

pb2, pb2_grpc = build_protos.load()
RNG = np.random.default_rng(5)


def triton_input(name: str, array: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture(scope="module")
def client(mlp_worker: RunningWorker) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(mlp_worker.grpc_target)


@pytest.fixture(scope="module")
def stub(mlp_worker: RunningWorker) -> Any:
    return pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(mlp_worker.grpc_target))


def test_health_and_metadata_rpcs(client: triton.InferenceServerClient, stub: object) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    server = client.get_server_metadata()
    assert server.name == "kiln-inference-worker"
    assert "model_stream_infer" in server.extensions
    model = client.get_model_metadata("mlp")
    assert (model.name, list(model.versions), model.platform) == ("mlp", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("y", "FP32", [-1, 3])]


def test_tritonclient_unary_inference_matches_onnx_runtime(
    client: triton.InferenceServerClient, models: SimpleNamespace
) -> None:
    x = RNG.standard_normal((4, 4)).astype(np.float32)
    result = client.infer("mlp", [triton_input("x", x)], request_id="r7")
    assert result.get_response().id == "r7"
    np.testing.assert_allclose(result.as_numpy("y"), reference(models.mlp, {"x": x})[0], rtol=1e-5)


def test_typed_contents_work_as_raw_contents_do(stub: Any, models: SimpleNamespace) -> None:
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    request = pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("y", "FP32", [2, 3])]
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, reference(models.mlp, {"x": x})[0], rtol=1e-5)


def test_a_declared_datatype_other_than_the_models_is_named_before_the_data_is_decoded(stub: Any) -> None:
    request = pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="x", datatype="BYTES", shape=[1, 4])
    tensor.contents.bytes_contents.extend([b"\xff"] * 4)  # not UTF-8: decoding would complain first
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "input 'x' has datatype BYTES; the model takes FP32"


def test_tritonclient_streaming_answers_every_request_in_order(
    client: triton.InferenceServerClient, models: SimpleNamespace
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    xs = [RNG.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(12)]
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, x in enumerate(xs):
            client.async_stream_infer("mlp", [triton_input("x", x)], request_id=str(i))
        client.async_stream_infer("mlp", [triton_input("x", np.zeros((1, 5), np.float32))], request_id="bad")
        client.async_stream_infer("mlp", [triton_input("x", xs[0])], request_id="after")
        got = [answers.get(timeout=30) for _ in range(len(xs) + 2)]
    finally:
        client.stop_stream()
    for i, (x, (result, error)) in enumerate(zip(xs, got, strict=False)):
        assert error is None
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("y"), reference(models.mlp, {"x": x})[0], rtol=1e-5)
    result, error = got[len(xs)]
    assert result is None
    assert "shape [1, 5]" in error.message()
    assert got[-1][0].get_response().id == "after"


def test_a_failed_stream_request_answers_with_its_id_beside_the_error(stub: Any) -> None:
    def request(request_id: str, name: str) -> Any:
        message = pb2.ModelInferRequest(model_name="mlp", id=request_id, raw_input_contents=[bytes(16)])
        message.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        return message

    sent = [request("req-42", "nope"), request("ok", "x"), request("", "nope"), request("late", "x")]
    answers = list(stub.ModelStreamInfer(iter(sent), timeout=10))

    assert [(a.error_message, a.infer_response.id) for a in answers] == [
        ("unknown input 'nope'; the model takes x", "req-42"),
        ("", "ok"),
        ("unknown input 'nope'; the model takes x", ""),
        ("", "late"),
    ]
    assert not answers[2].HasField("infer_response")


@pytest.mark.parametrize(
    ("model", "shape", "datatype", "name", "code", "message"),
    [
        ("mlp", (1, 5), "FP32", "x", "INVALID_ARGUMENT", "shape [1, 5]"),
        ("mlp", (1, 4), "FP64", "x", "INVALID_ARGUMENT", "datatype FP64"),
        ("mlp", (1, 4), "FP32", "z", "INVALID_ARGUMENT", "unknown input 'z'"),
        ("nope", (1, 4), "FP32", "x", "NOT_FOUND", "unknown model 'nope'"),
    ],
)
def test_errors_map_to_grpc_status_codes(
    client: triton.InferenceServerClient,
    model: str,
    shape: tuple[int, ...],
    datatype: str,
    name: str,
    code: str,
    message: str,
) -> None:
    array = np.zeros(shape, dtype=np.float64 if datatype == "FP64" else np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [triton_input(name, array, datatype)])
    assert caught.value.status() == f"StatusCode.{code}"
    assert message in caught.value.message()


def test_a_malformed_raw_tensor_is_invalid_argument(stub: Any) -> None:
    request = pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\0" * 15])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 16 bytes" in caught.value.details()


def test_typed_contents_beside_raw_contents_are_invalid_argument(stub: Any) -> None:
    """The protocol sends a request's tensors one way or the other; which one would win is a guess."""
    request = pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\0" * 16])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1.0] * 4)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "carries contents while the request sends raw_input_contents" in caught.value.details()


def test_messages_over_the_size_limit_are_refused(models: SimpleNamespace) -> None:
    with running(make_config(models.mlp, limits=Limits(max_grpc_message_bytes=4096))) as worker:
        client = triton.InferenceServerClient(worker.grpc_target)
        assert client.infer("mlp", [triton_input("x", np.zeros((32, 4), np.float32))]).as_numpy(
            "y"
        ).shape == (32, 3)
        big = np.zeros((2000, 4), np.float32)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("mlp", [triton_input("x", big)])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_queue_full_is_resource_exhausted_and_timeouts_are_deadline_exceeded(models: SimpleNamespace) -> None:
    config = make_config(models.square, "square", batching=DynamicBatching(max_queue_size=1))
    with running(config) as worker, ThreadPoolExecutor(2) as pool:
        client = triton.InferenceServerClient(worker.grpc_target)
        small = triton_input("a", np.eye(4, dtype=np.float32)[None])
        busy = occupy(pool, worker)
        with pytest.raises(InferenceServerException) as caught:  # the client's own deadline
            client.infer("square", [small], client_timeout=0.05)
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        with pytest.raises(InferenceServerException) as caught:  # the protocol's timeout parameter
            client.infer("square", [small], timeout=50_000)
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "timed out" in caught.value.message()
        assert busy.result().status_code == 200

        # One request runs, one waits in the queue of one, the next is refused. On a busy machine the
        # running one may end before the third arrives (then all three are served): try again.
        refused: list[InferenceServerException] = []
        deadline = time.monotonic() + 120
        while not refused and time.monotonic() < deadline:
            busy = occupy(pool, worker)
            queued = pool.submit(client.infer, "square", [small])
            wait_queued(worker, queued)
            try:
                client.infer("square", [small])
            except InferenceServerException as exc:
                refused.append(exc)
            assert busy.result().status_code == 200
            assert queued.result().as_numpy("p").shape == (1, 4, 4)
        assert refused, "no call was refused while the queue was full"
        assert refused[0].status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_health_watch_follows_ready_then_draining(models: SimpleNamespace) -> None:
    with running(make_config(models.square, "square")) as worker, ThreadPoolExecutor(2) as pool:
        channel = grpc.insecure_channel(worker.grpc_target)
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status
            == serving
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == serving
        busy = occupy(pool, worker)
        worker.worker.stop()
        assert next(watch).status == not_serving
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == not_serving
        client = triton.InferenceServerClient(worker.grpc_target)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("square", [triton_input("a", np.eye(4, dtype=np.float32)[None])])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert not client.is_server_ready()
        assert busy.result().status_code == 200
        channel.close()


def test_http_and_grpc_requests_batch_together(models: SimpleNamespace) -> None:
    batching = DynamicBatching(max_queue_delay_microseconds=LONGEST_DELAY_US, preferred_batch_sizes=(2,))
    with running(make_config(models.mlp, batching=batching)) as worker, ThreadPoolExecutor(2) as pool:
        client = triton.InferenceServerClient(worker.grpc_target)
        x = np.ones((1, 4), np.float32)
        over_grpc = pool.submit(client.infer, "mlp", [triton_input("x", x)])
        over_http = pool.submit(httpx.post, worker.url + "/v2/models/mlp/infer", json=v2_body({"x": x}))
        np.testing.assert_allclose(
            over_grpc.result().as_numpy("y").reshape(-1),
            over_http.result().json()["outputs"][0]["data"],
            rtol=1e-6,
        )
        assert worker.metric("kiln_worker_batches_total") == 1
        assert worker.metric("kiln_worker_requests_total", protocol="grpc", outcome="success") == 1
        assert worker.metric("kiln_worker_requests_total", protocol="http", outcome="success") == 1


def test_a_stream_the_client_cancels_leaves_nothing_queued_or_in_flight(models: SimpleNamespace) -> None:
    def square(k: int) -> object:
        request = pb2.ModelInferRequest(
            model_name="square", raw_input_contents=[np.eye(k, dtype=np.float32).tobytes()]
        )
        request.inputs.add(name="a", datatype="FP32", shape=[1, k, k])
        return request

    with running(make_config(models.square, "square")) as worker:
        done_sending = threading.Event()

        def requests() -> Iterator[object]:
            yield square(BIG_K)
            yield from (square(4) for _ in range(3))
            done_sending.wait(30)

        with grpc.insecure_channel(worker.grpc_target) as channel:
            call = pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests())
            wait_for(lambda: worker.metric("kiln_worker_in_flight_requests") == 4)
            call.cancel()
            wait_for(lambda: worker.metric("kiln_worker_in_flight_requests") == 0)
            done_sending.set()
        assert worker.metric("kiln_worker_queue_depth") == 0
        assert worker.metric("kiln_worker_requests_total", protocol="grpc", outcome="cancelled") == 4
        wait_for(
            lambda: worker.metric("kiln_worker_batches_total") == 1
        )  # the running one finishes; none after
        assert worker.metric("kiln_worker_inferences_total") == 1


def test_a_bug_while_reading_a_request_answers_internal_and_leaves_nothing_in_flight(
    models: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected into decoding (any exception, not a WorkerError) must not hang a stream."""
    from inference_worker.grpc_api import InferenceServicer

    decode = InferenceServicer._decode

    def faulty(self: InferenceServicer, request: Any, time_remaining: float | None) -> Any:
        if request.id == "boom":
            raise RuntimeError("injected fault")
        return decode(self, request, time_remaining)

    monkeypatch.setattr(InferenceServicer, "_decode", faulty)

    def square(request_id: str) -> Any:
        request = pb2.ModelInferRequest(
            model_name="square", id=request_id, raw_input_contents=[np.eye(4, dtype=np.float32).tobytes()]
        )
        request.inputs.add(name="a", datatype="FP32", shape=[1, 4, 4])
        return request

    with running(make_config(models.square, "square")) as worker:
        with grpc.insecure_channel(worker.grpc_target) as channel:
            stub = pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.ModelInfer(square("boom"), timeout=10)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            answers = list(
                stub.ModelStreamInfer(iter([square("a"), square("boom"), square("b")]), timeout=10)
            )
        assert [bool(a.error_message) for a in answers] == [False, True, False]
        assert "internal error" in answers[1].error_message
        wait_for(lambda: worker.metric("kiln_worker_in_flight_requests") == 0)
        assert worker.metric("kiln_worker_requests_total", protocol="grpc", outcome="internal") == 2
