"""gRPC through a real gateway, driven by stock ``tritonclient.grpc``: split, sticky keys, streams,
shadow, retries and the per-variant counters, against real workers following a real Redis.

The variants are told apart by what the gateway labels every answer with: the response
parameters ``kiln_variant`` and ``kiln_model_version``.
"""

from __future__ import annotations

import queue
import socket
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from inference_worker.gateway import identity
from tests.support.gateway import (
    Process,
    applied,
    classifier,
    gateway,
    metric,
    publish,
    routing_key,
    table,
    worker,
)
from tests.support.polling import wait_for

X = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    directory = tmp_path_factory.mktemp("gateway-grpc")
    return SimpleNamespace(
        same=classifier(directory / "same.onnx", seed=1), other=classifier(directory / "other.onnx", seed=2)
    )


@pytest.fixture(scope="module")
def workers(models: SimpleNamespace) -> Iterator[SimpleNamespace]:
    """``w1`` and ``w2`` serve the same model over HTTP and gRPC; ``other`` different weights."""
    with (
        worker(models.same, grpc=True) as w1,
        worker(models.same, grpc=True) as w2,
        worker(models.other, grpc=True, nice=19) as other,
    ):
        yield SimpleNamespace(w1=w1, w2=w2, other=other)


def inputs(x: np.ndarray = X) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def labels(result: Any) -> tuple[str, str]:
    parameters = result.get_response().parameters
    return parameters["kiln_variant"].string_param, parameters["kiln_model_version"].string_param


def client(gw: Process) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gw.grpc)


def test_a_unary_call_is_answered_by_the_variant_s_worker_and_labelled_with_variant_and_version(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [workers.w1])]}, versions={"a": 7}))
        applied(gw.url, 1)
        with client(gw) as triton:
            assert triton.is_server_live()
            assert triton.is_server_ready()
            metadata = triton.get_server_metadata(as_json=True)
            assert (metadata["name"], metadata["extensions"]) == ("kiln-gateway", list(identity.EXTENSIONS))
            assert triton.is_model_ready("fraud")
            assert [i.name for i in triton.get_model_metadata("fraud").inputs] == ["x"]
            result = triton.infer("fraud", inputs())
            direct = grpcclient.InferenceServerClient(workers.w1.grpc).infer("clf", inputs())
        assert labels(result) == ("a", "7")
        assert result.get_response().model_name == "clf"  # the deployment's name became the variant's
        np.testing.assert_array_equal(result.as_numpy("y"), direct.as_numpy("y"))
        wait_for(lambda: metric(gw.url, "kiln_gateway_requests_total", deployment="fraud", variant="a") >= 1)


def test_unknown_deployments_and_a_gateway_without_a_table_answer_with_a_code_and_a_message(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw, client(gw) as triton:
        with pytest.raises(InferenceServerException) as before:
            triton.infer("fraud", inputs())
        assert before.value.status() == "StatusCode.UNAVAILABLE"
        assert "no routing table" in before.value.message()
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [workers.w1])]}))
        applied(gw.url, 1)
        with pytest.raises(InferenceServerException) as unknown:
            triton.infer("nope", inputs())
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
        assert unknown.value.message() == "unknown deployment 'nope'"


def test_an_80_20_split_applies_to_unary_calls_and_a_routing_key_in_metadata_keeps_its_variant(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw, client(gw) as triton:
        arms = [("a", 80, 0, [workers.w1]), ("b", 20, 0, [workers.w2])]
        publish(redis, key, table(1, {"fraud": arms}, versions={"a": 1, "b": 2}))
        applied(gw.url, 1)
        seen = Counter(labels(triton.infer("fraud", inputs()))[0] for _ in range(1000))
        assert abs(seen["b"] / 1000 - 0.20) < 0.05, seen
        for user in ("user-1", "user-2", "user-3", "user-4"):
            sticky = {
                labels(triton.infer("fraud", inputs(), headers={"x-routing-key": user})) for _ in range(20)
            }
            assert len(sticky) == 1, (user, sticky)


def _stream(gw: Process, n: int, headers: dict[str, str] | None = None) -> list[Any]:
    """``n`` requests on one stream; the answers in the order they came."""
    answers: queue.Queue[Any] = queue.Queue()
    with client(gw) as triton:
        triton.start_stream(callback=lambda result, error: answers.put(error or result), headers=headers)
        for i in range(n):
            x = np.full((1, 4), float(i), dtype=np.float32)
            triton.async_stream_infer("fraud", inputs(x), request_id=str(i))
        out = [answers.get(timeout=30) for _ in range(n)]
        triton.stop_stream()
    return out


def test_a_stream_answers_in_order_with_each_request_split_by_weight_or_kept_on_one_arm_by_its_key(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        arms = [("a", 50, 0, [workers.w1]), ("b", 50, 0, [workers.w2])]
        publish(redis, key, table(1, {"fraud": arms}, versions={"a": 1, "b": 2}))
        applied(gw.url, 1)
        answers = _stream(gw, 200)
        assert [a.get_response().id for a in answers] == [str(i) for i in range(200)]
        variants = Counter(labels(a)[0] for a in answers)
        assert min(variants["a"], variants["b"]) > 50, variants
        keyed = _stream(gw, 50, headers={"x-routing-key": "user-9"})
        assert len({labels(a) for a in keyed}) == 1


def test_a_failed_request_in_a_stream_answers_with_its_message_and_the_stream_goes_on(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [workers.w1])]}))
        applied(gw.url, 1)
        answers: queue.Queue[Any] = queue.Queue()
        with client(gw) as triton:
            triton.start_stream(callback=lambda result, error: answers.put(error or result))
            triton.async_stream_infer("fraud", inputs())
            triton.async_stream_infer("nope", inputs())
            wrong = grpcclient.InferInput("x", [1, 5], "FP32")
            wrong.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
            triton.async_stream_infer("fraud", [wrong])
            triton.async_stream_infer("fraud", inputs())
            got = [answers.get(timeout=30) for _ in range(4)]
            triton.stop_stream()
        assert labels(got[0]) == ("a", "1")
        assert isinstance(got[1], InferenceServerException)
        assert "unknown deployment 'nope'" in got[1].message()
        assert isinstance(got[2], InferenceServerException)
        assert "x" in got[2].message()
        assert labels(got[3]) == ("a", "1")


def _dead_target() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_replica_that_cannot_be_reached_is_retried_on_another_and_none_left_is_unavailable(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw, client(gw) as triton:
        payload = table(1, {"fraud": [("a", 100, 0, [workers.w1, workers.w2])]})
        payload["deployments"]["fraud"]["variants"][0]["replicas"][0]["grpc"] = _dead_target()
        publish(redis, key, payload)
        applied(gw.url, 1)
        for _ in range(20):
            assert labels(triton.infer("fraud", inputs())) == ("a", "1")
        wait_for(
            lambda: (
                metric(gw.url, "kiln_gateway_upstream_retries_total", deployment="fraud", variant="a") >= 1
            )
        )
        alone = table(2, {"fraud": [("a", 100, 0, [workers.w1])]})
        alone["deployments"]["fraud"]["variants"][0]["replicas"][0]["grpc"] = _dead_target()
        publish(redis, key, alone)
        applied(gw.url, 2)
        with pytest.raises(InferenceServerException) as error:
            triton.infer("fraud", inputs())
        assert error.value.status() == "StatusCode.UNAVAILABLE"
        assert "deployment 'fraud' variant 'a'" in error.value.message()


def test_a_grpc_shadow_receives_copies_and_its_answers_are_compared_with_the_live_ones(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw, client(gw) as triton:
        arms = [("a", 100, 0, [workers.w1]), ("twin", 0, 100, [workers.w2]), ("o", 0, 100, [workers.other])]
        publish(redis, key, table(1, {"fraud": arms}))
        applied(gw.url, 1)
        for _ in range(40):
            assert labels(triton.infer("fraud", inputs()))[0] == "a"
        for _ in range(10):
            _stream(gw, 4)

        def compared(variant: str) -> float:
            return metric(gw.url, "kiln_gateway_shadow_compared_total", deployment="fraud", variant=variant)

        wait_for(lambda: compared("twin") >= 80 and compared("o") >= 80, timeout=30)
        rows = metric(gw.url, "kiln_gateway_shadow_argmax_rows_total", variant="twin")
        assert metric(gw.url, "kiln_gateway_shadow_argmax_agreements_total", variant="twin") == rows > 0
        other_rows = metric(gw.url, "kiln_gateway_shadow_argmax_rows_total", variant="o")
        assert metric(gw.url, "kiln_gateway_shadow_argmax_agreements_total", variant="o") < other_rows
        assert metric(gw.url, "kiln_gateway_shadow_errors_total", deployment="fraud") == 0


def test_a_variant_without_a_grpc_server_answers_unavailable_and_counts_it_for_that_variant(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw, client(gw) as triton:
        payload = table(1, {"fraud": [("a", 100, 0, [workers.w1])]})
        payload["deployments"]["fraud"]["variants"][0]["replicas"][0]["grpc"] = ""
        publish(redis, key, payload)
        applied(gw.url, 1)
        with pytest.raises(InferenceServerException) as error:
            triton.infer("fraud", inputs())
        assert error.value.status() == "StatusCode.UNAVAILABLE"
        assert error.value.message() == "no ready replica of deployment 'fraud' variant 'a' serves gRPC"
        wait_for(
            lambda: (
                metric(gw.url, "kiln_gateway_responses_total", deployment="fraud", variant="a", code="503")
                >= 1
            )
        )


def test_a_replica_that_never_answers_ends_the_call_at_the_upstream_deadline_and_the_connection_goes_on(
    workers: SimpleNamespace,
) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never answers
    port = silent.getsockname()[1]
    with (
        silent,
        routing_key() as (key, redis),
        gateway(key, "--upstream-timeout-s", "0.3") as gw,
        client(gw) as triton,
    ):
        payload = table(1, {"fraud": [("a", 100, 0, [workers.w1])]})
        payload["deployments"]["fraud"]["variants"][0]["replicas"][0]["grpc"] = f"127.0.0.1:{port}"
        publish(redis, key, payload)
        applied(gw.url, 1)
        for _ in range(2):  # the first call opens the connection, the second reuses it
            with pytest.raises(InferenceServerException) as error:
                triton.infer("fraud", inputs(), client_timeout=10)
            assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        wait_for(
            lambda: (
                metric(gw.url, "kiln_gateway_responses_total", deployment="fraud", variant="a", code="504")
                >= 2
            )
        )
        payload["deployments"]["fraud"]["variants"][0]["replicas"][0]["grpc"] = workers.w1.grpc
        publish(redis, key, {**payload, "version": 2})
        applied(gw.url, 2)
        assert labels(triton.infer("fraud", inputs())) == ("a", "1")
