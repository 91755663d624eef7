"""Hostile HTTP/2 on the worker's gRPC port: each gets an error or a closed connection, others go on."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from inference_worker import build_protos
from inference_worker.config import Limits
from inference_worker.h2_send import MAX_STREAMS
from tests.support import onnx_models
from tests.support.gateway import applied, classifier, gateway, publish, routing_key, table
from tests.support.gateway import worker as replica_worker
from tests.support.h2_client import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    RST_STREAM,
    WINDOW_UPDATE,
    H2Client,
    frame,
    grpc_message,
    request_headers,
)
from tests.support.polling import wait_for
from tests.support.workers import BIG_K, RunningWorker, make_config, running

pb2, pb2_grpc = build_protos.load()
LIMIT = 64 * 1024
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 0x7, 0x8, 0x9, 0xB, 0x1


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    path = onnx_models.mlp(tmp_path_factory.mktemp("hostile") / "mlp.onnx")
    with running(make_config(path, limits=Limits(max_grpc_message_bytes=LIMIT))) as handle:
        yield handle


def mlp_call(rows: int = 1, request_id: str = "") -> bytes:
    x = np.ones((rows, 4), np.float32)
    request = pb2.ModelInferRequest(model_name="mlp", id=request_id, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    return bytes(request.SerializeToString())


def still_serves(worker: RunningWorker) -> None:
    client = triton.InferenceServerClient(worker.grpc_target)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert client.infer("mlp", [tensor]).as_numpy("y").shape == (1, 3)
    wait_for(lambda: worker.metric("kiln_worker_in_flight_requests") == 0)
    client.close()


def goaway_code(client: H2Client) -> int:
    got = client.until(GOAWAY)
    assert got is not None, "the connection closed without GOAWAY"
    return int(struct.unpack(">II", got.payload[:8])[1])


def test_garbage_bytes_get_goaway_and_a_closed_connection(worker: RunningWorker) -> None:
    with socket.create_connection(("127.0.0.1", worker.worker.grpc_port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64))  # a TLS hello
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply[3] == GOAWAY or GOAWAY in reply[:64]  # our SETTINGS first, then GOAWAY
    still_serves(worker)


def test_an_http1_request_gets_a_426_naming_the_protocol(worker: RunningWorker) -> None:
    with socket.create_connection(("127.0.0.1", worker.worker.grpc_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert b"HTTP/1.1 426 " in reply
    assert b"this port speaks gRPC" in reply
    still_serves(worker)


def test_a_huge_header_block_ends_the_connection(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    block = request_headers(x_big="a" * (5 * 64 * 1024))
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames = [frame(HEADERS, 0, 1, chunks[0])]
    frames += [
        frame(9, END_HEADERS if i == len(chunks) - 1 else 0, 1, c) for i, c in enumerate(chunks[1:], 1)
    ]
    client.send(*frames)
    assert goaway_code(client) == ENHANCE_YOUR_CALM
    assert client.closed()
    client.close()
    still_serves(worker)


def test_metadata_over_the_limit_is_resource_exhausted(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    block = request_headers(x_big="a" * (70 * 1024))
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames = [frame(HEADERS, END_STREAM, 1, chunks[0])]
    frames += [
        frame(9, END_HEADERS if i == len(chunks) - 1 else 0, 1, c) for i, c in enumerate(chunks[1:], 1)
    ]
    client.send(*frames)
    assert client.status(1)["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
    client.call(3, mlp_call())  # the connection goes on
    assert client.status(3)["grpc-status"] == "0"
    client.close()


def test_a_message_declared_over_the_limit_is_refused_before_it_arrives(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    prefix = b"\x00" + (LIMIT + 1).to_bytes(4, "big")
    client.send(frame(HEADERS, END_HEADERS, 1, request_headers()), frame(DATA, 0, 1, prefix + b"x" * 100))
    trailers = client.status(1)
    assert trailers["grpc-status"] == "8"
    assert f"larger than max ({LIMIT + 1} vs. {LIMIT})" in trailers["grpc-message"]
    client.close()


def test_compressed_messages_and_other_content_types_are_refused(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    compressed = b"\x01" + (5).to_bytes(4, "big") + b"zzzzz"
    client.send(
        frame(HEADERS, END_HEADERS, 1, request_headers(grpc_encoding="gzip")), frame(DATA, 1, 1, compressed)
    )
    assert client.status(1)["grpc-status"] == "12"  # UNIMPLEMENTED
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, request_headers(content_type="text/plain")))
    assert client.status(3)[":status"] == "415"
    client.close()


def test_a_stream_reset_mid_message_leaves_nothing_in_flight(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    message = grpc_message(mlp_call())
    client.send(
        frame(HEADERS, END_HEADERS, 1, request_headers()),
        frame(DATA, 0, 1, message[:7]),
        frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)),
        frame(DATA, 0, 1, message[7:]),  # after the reset: ignored
    )
    client.call(3, mlp_call(request_id="next"))
    assert client.status(3)["grpc-status"] == "0"
    client.close()
    still_serves(worker)


def test_bad_hpack_is_a_compression_error(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\x7f"))  # index far past both tables
    assert goaway_code(client) == COMPRESSION_ERROR
    assert client.closed()
    client.close()


def test_frames_out_of_order_are_protocol_errors(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    client.send(frame(PING, 0, 0, b"12345678"))
    pong = client.until(PING)
    assert pong is not None
    assert (pong.payload, pong.flags) == (b"12345678", 1)
    client.send(frame(DATA, 0, 7, b"data on a stream never opened"))
    assert goaway_code(client) == PROTOCOL_ERROR
    assert client.closed()
    client.close()


def test_a_client_that_never_grants_window_gets_new_streams_refused(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port, settings={0x4: 0})  # SETTINGS_INITIAL_WINDOW_SIZE = 0
    message = mlp_call()
    for index in range(MAX_STREAMS + 8):
        client.call(2 * index + 1, message)
    refused: set[int] = set()
    while len(refused) < 8:
        got = client.until(RST_STREAM)
        assert got is not None
        assert int.from_bytes(got.payload, "big") == REFUSED_STREAM
        refused.add(got.stream_id)
    assert min(refused) > 2 * MAX_STREAMS - 1  # the first MAX_STREAMS were taken and answered
    still_serves(worker)  # others are served meanwhile
    client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 16)))
    assert client.status(1)["grpc-status"] == "0"  # the answer waited for the window
    client.close()


def test_a_connection_closed_mid_request_leaves_nothing_in_flight(tmp_path: Path) -> None:
    path = onnx_models.square(tmp_path / "square.onnx")
    with running(make_config(path, "square")) as slow:
        half = H2Client(slow.worker.grpc_port)  # a message cut off by the close: never counted
        half.send(frame(HEADERS, END_HEADERS, 1, request_headers()), frame(DATA, 0, 1, b"\x00\x00\x01"))
        half.close()
        request = pb2.ModelInferRequest(
            model_name="square", raw_input_contents=[np.eye(BIG_K, dtype=np.float32).tobytes()]
        )
        request.inputs.add(name="a", datatype="FP32", shape=[1, BIG_K, BIG_K])
        channel = grpc.insecure_channel(slow.grpc_target)
        call = pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(request)
        wait_for(lambda: slow.metric("kiln_worker_in_flight_requests") == 1)
        threading.Thread(target=channel.close).start()  # the connection goes with the call in flight
        wait_for(lambda: slow.metric("kiln_worker_in_flight_requests") == 0)
        assert slow.metric("kiln_worker_requests_total", protocol="grpc", outcome="cancelled") == 1
        assert call.cancelled() or call.exception() is not None
        assert slow.metric("kiln_worker_requests_total", protocol="grpc") == 1
        wait_for(lambda: slow.metric("kiln_worker_batches_total") == 1)  # the run it had begun ends


def test_a_call_that_never_finishes_ends_at_its_deadline(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    message = grpc_message(mlp_call())
    client.send(
        frame(HEADERS, END_HEADERS, 1, request_headers(grpc_timeout="200m")), frame(DATA, 0, 1, message[:9])
    )
    path = "/inference.GRPCInferenceService/ModelStreamInfer"
    client.send(frame(HEADERS, END_HEADERS, 3, request_headers(path=path, grpc_timeout="300m")))
    assert client.status(1)["grpc-status"] == "4"  # DEADLINE_EXCEEDED
    assert client.status(3)["grpc-status"] == "4"
    client.close()
    still_serves(worker)


def test_the_gateway_s_grpc_port_refuses_hostile_http2_and_goes_on_routing(tmp_path: Path) -> None:
    model = classifier(tmp_path / "clf.onnx", seed=3)
    with replica_worker(model, grpc=True) as replica, routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [replica])]}))
        applied(gw.url, 1)
        port = int(gw.grpc.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"HTTP/1.1 426 " in sock.recv(4096)
        client = H2Client(port)
        client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\x7f"))
        assert goaway_code(client) == COMPRESSION_ERROR
        client.close()
        client = H2Client(port)
        prefix = b"\x00" + (128 << 20).to_bytes(4, "big")  # past the gateway's body limit
        client.send(frame(HEADERS, END_HEADERS, 1, request_headers()), frame(DATA, 0, 1, prefix))
        assert client.status(1)["grpc-status"] == "8"
        client.close()
        triton_client = triton.InferenceServerClient(gw.grpc)
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        assert triton_client.infer("fraud", [tensor]).as_numpy("y").shape[0] == 1
        triton_client.close()


def test_a_rapid_reset_flood_ends_the_connection(worker: RunningWorker) -> None:
    client = H2Client(worker.worker.grpc_port)
    message = grpc_message(mlp_call())
    for index in range(1500):
        stream_id = 2 * index + 1
        client.send(
            frame(HEADERS, END_HEADERS, stream_id, request_headers()),
            frame(DATA, END_STREAM, stream_id, message),
            frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)),
        )
    assert goaway_code(client) == ENHANCE_YOUR_CALM
    client.close()
    still_serves(worker)
