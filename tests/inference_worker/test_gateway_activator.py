"""The gateway's activator with a real worker: requests for a variant at zero are held, asked for,
forwarded once a replica is routed, and answered 503 when none comes in time or the queue is full;
gRPC calls (stock tritonclient.grpc) the same way, in the same queue."""

from __future__ import annotations

import queue
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from inference_worker.contracts.activation import activation_key, parse_activation
from tests.support.gateway import (
    Client,
    Process,
    applied,
    classifier,
    gateway,
    infer_body,
    metric,
    publish,
    routing_key,
    table,
    worker,
)
from tests.support.polling import wait_for

BODY = infer_body(rows=2, seed=0)


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with worker(classifier(tmp_path_factory.mktemp("activator") / "clf.onnx", seed=1), grpc=True) as w:
        yield w


def at_zero(version: int, replicas: list[Process]) -> dict[str, Any]:
    payload = table(version, {"idle": [("a", 100, 0, replicas)]})
    payload["deployments"]["idle"]["variants"][0]["activate"] = True
    return payload


def test_held_requests_ask_for_a_replica_and_are_answered_once_one_is_routed(replica: Process) -> None:
    with routing_key() as (key, redis), gateway(key, "--activator-timeout-s", "30") as gw:
        publish(redis, key, at_zero(1, []))
        applied(gw.url, 1)

        def infer(_: int) -> tuple[int, dict[str, str]]:
            with Client(gw.url) as client:
                status, headers, _body = client.infer("idle", BODY)
                return status, headers

        with ThreadPoolExecutor(max_workers=5) as pool:
            answers = pool.map(infer, range(5))
            asked = wait_for(lambda: redis.hget(activation_key(key), "idle/a"), timeout=10)
            request = parse_activation(orjson.loads(asked))
            assert (request.deployment, request.variant) == ("idle", "a")
            assert request.held >= 1
            publish(redis, key, at_zero(2, [replica]))
            results = list(answers)

    assert [status for status, _ in results] == [200] * 5
    assert {headers["x-kiln-variant"] for _, headers in results} == {"a"}


def test_a_held_request_gets_a_503_when_no_replica_comes_and_a_full_queue_refuses_at_once() -> None:
    with (
        routing_key() as (key, redis),
        gateway(key, "--activator-timeout-s", "1", "--activator-queue-size", "1") as gw,
    ):
        publish(redis, key, at_zero(1, []))
        applied(gw.url, 1)

        def infer(_: int) -> tuple[int, Any]:
            with Client(gw.url) as client:
                status, _headers, body = client.infer("idle", BODY)
                return status, orjson.loads(body)

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = sorted(pool.map(infer, range(2)), key=lambda r: str(r[1]))

    assert [status for status, _ in results] == [503, 503]
    messages = [body["error"] for _, body in results]
    assert "deployment 'idle' variant 'a' is starting and holds as many requests as it can" in messages
    assert "no replica of deployment 'idle' variant 'a' became ready within 1 s" in messages


def grpc_infer(target: str, timeout: float = 60) -> Any:
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return grpcclient.InferenceServerClient(target).infer("idle", [tensor], client_timeout=timeout)


def test_requests_whose_clients_left_hold_no_place_and_never_reach_the_replica(replica: Process) -> None:
    """HTTP clients that closed their connection and gRPC calls past their deadline while held."""
    answered = {"protocol": "http", "outcome": "success", "model": "clf"}
    served_before = replica_metric(replica, **answered) + replica_metric(
        replica, **{**answered, "protocol": "grpc"}
    )
    with (
        routing_key() as (key, redis),
        gateway(key, "--activator-timeout-s", "30", "--activator-queue-size", "2") as gw,
    ):
        publish(redis, key, at_zero(1, []))
        applied(gw.url, 1)
        head = b"POST /v2/models/idle/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
                sock.sendall(head + BODY)
                wait_for(lambda: metric(gw.url, "kiln_gateway_held_requests") == 1, timeout=10)
        wait_for(lambda: metric(gw.url, "kiln_gateway_held_requests") == 0, timeout=10)  # both left
        for _ in range(2):
            with pytest.raises(InferenceServerException, match="Deadline"):
                grpc_infer(gw.grpc, timeout=0.5)
        assert metric(gw.url, "kiln_gateway_held_requests") == 0

        with ThreadPoolExecutor(max_workers=2) as pool:
            http_answer = pool.submit(held_http_infer, gw.url)
            grpc_answer = pool.submit(grpc_infer, gw.grpc)
            wait_for(lambda: metric(gw.url, "kiln_gateway_held_requests") == 2, timeout=10)  # room for both
            publish(redis, key, at_zero(2, [replica]))
            assert http_answer.result(timeout=60)[0] == 200
            assert grpc_answer.result(timeout=60).as_numpy("y").shape[0] == 2

    served = replica_metric(replica, **answered) + replica_metric(replica, **{**answered, "protocol": "grpc"})
    assert served - served_before == 2  # the two that left never reached it


def held_http_infer(url: str) -> tuple[int, dict[str, str], bytes]:
    with Client(url) as client:
        return client.infer("idle", BODY)


def replica_metric(process: Process, **labels: str) -> float:
    return metric(process.url, "kiln_worker_requests_total", **labels)


def test_a_grpc_call_for_a_variant_at_zero_is_held_asked_for_and_answered_by_the_replica_routed_later(
    replica: Process,
) -> None:
    with routing_key() as (key, redis), gateway(key, "--activator-timeout-s", "30") as gw:
        publish(redis, key, at_zero(1, []))
        applied(gw.url, 1)
        with ThreadPoolExecutor(max_workers=3) as pool:
            calls = [pool.submit(grpc_infer, gw.grpc) for _ in range(3)]
            asked = wait_for(lambda: redis.hget(activation_key(key), "idle/a"), timeout=10)
            assert parse_activation(orjson.loads(asked)).held >= 1
            assert not any(call.done() for call in calls)  # held, not refused
            publish(redis, key, at_zero(2, [replica]))
            results = [call.result(timeout=60) for call in calls]

    for result in results:
        assert result.get_response().parameters["kiln_variant"].string_param == "a"
        assert result.as_numpy(result.get_response().outputs[0].name).shape[0] == 2


def test_a_held_grpc_call_is_unavailable_with_the_reason_when_no_replica_comes_in_time() -> None:
    with routing_key() as (key, redis), gateway(key, "--activator-timeout-s", "1") as gw:
        publish(redis, key, at_zero(1, []))
        applied(gw.url, 1)
        with pytest.raises(InferenceServerException) as failure:
            grpc_infer(gw.grpc)

    assert failure.value.status() == "StatusCode.UNAVAILABLE"
    assert "no replica of deployment 'idle' variant 'a' became ready within 1 s" in failure.value.message()


def test_the_requests_of_a_grpc_stream_for_a_variant_at_zero_are_held_and_answered_in_order(
    replica: Process,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with routing_key() as (key, redis), gateway(key, "--activator-timeout-s", "30") as gw:
        publish(redis, key, at_zero(1, []))
        applied(gw.url, 1)
        client = grpcclient.InferenceServerClient(gw.grpc)
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for i in range(3):
                x = np.full((1, 4), float(i), dtype=np.float32)
                tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                client.async_stream_infer("idle", [tensor], request_id=str(i))
            wait_for(lambda: redis.hget(activation_key(key), "idle/a"), timeout=10)
            assert answers.empty()  # held, not refused
            publish(redis, key, at_zero(2, [replica]))
            got = [answers.get(timeout=60) for _ in range(3)]
        finally:
            client.stop_stream()
            client.close()

    assert [error for _, error in got] == [None, None, None]
    assert [result.get_response().id for result, _ in got] == ["0", "1", "2"]
    assert all(result.get_response().parameters["kiln_variant"].string_param == "a" for result, _ in got)
