"""The system shared memory extension with stock tritonclient (HTTP, gRPC unary and streaming)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import serialize_byte_tensor, serialized_byte_size

from tests.support.doc_blocks import blocks_of
from tests.support.onnx_models import image_classifier, reference
from tests.support.paths import ROOT
from tests.support.shm import (
    client_region,
    client_shm,
    open_descriptors_of,
    raw_object,
    shm_client,
    with_shared_memory,
)
from tests.support.workers import RunningWorker, make_config, running

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def shm_worker(models: SimpleNamespace) -> Iterator[RunningWorker]:
    with running(with_shared_memory(make_config(models.mlp))) as handle:
        yield handle


@pytest.fixture
def http(shm_worker: RunningWorker) -> Iterator[http_client.InferenceServerClient]:
    with shm_client(shm_worker) as client:
        yield client


@pytest.fixture
def grpc(shm_worker: RunningWorker) -> Iterator[grpc_client.InferenceServerClient]:
    with shm_client(shm_worker, "grpc") as client:
        yield client


def test_tritonclient_http_reads_inputs_from_and_writes_outputs_to_shared_memory(
    http: http_client.InferenceServerClient, models: SimpleNamespace
) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    with (
        client_region("in", x.nbytes) as (in_key, in_handle),
        client_region("out", 5 * 3 * 4) as (
            out_key,
            out_handle,
        ),
    ):
        client_shm.set_shared_memory_region(in_handle, [x])
        http.register_system_shared_memory("in", in_key, x.nbytes)
        http.register_system_shared_memory("out", out_key, 60)
        tensor = http_client.InferInput("x", [5, 4], "FP32")
        tensor.set_shared_memory("in", x.nbytes)
        wanted = http_client.InferRequestedOutput("y")
        wanted.set_shared_memory("out", 60)

        result = http.infer("mlp", [tensor], outputs=[wanted])

        output = result.get_output("y")
        assert "data" not in output
        assert output["parameters"] == {"shared_memory_region": "out", "shared_memory_byte_size": 60}
        y = client_shm.get_contents_as_numpy(out_handle, np.float32, output["shape"])
        plain = http_client.InferInput("x", [5, 4], "FP32")
        plain.set_data_from_numpy(x)
        np.testing.assert_array_equal(y, http.infer("mlp", [plain]).as_numpy("y"))
        np.testing.assert_allclose(y, reference(models.mlp, {"x": x})[0], rtol=1e-5)
        assert sorted(http.get_system_shared_memory_status(), key=lambda r: r["name"]) == [
            {"name": "in", "key": in_key, "offset": 0, "byte_size": 80},
            {"name": "out", "key": out_key, "offset": 0, "byte_size": 60},
        ]
        assert http.get_system_shared_memory_status("in") == [
            {"name": "in", "key": in_key, "offset": 0, "byte_size": 80}
        ]
        http.unregister_system_shared_memory("in")
        assert [region["name"] for region in http.get_system_shared_memory_status()] == ["out"]
        http.unregister_system_shared_memory()
        assert http.get_system_shared_memory_status() == []


def test_a_region_at_an_offset_and_tensors_at_offsets_inside_it(
    http: http_client.InferenceServerClient,
) -> None:
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    with client_region("both", 4096) as (key, handle):
        client_shm.set_shared_memory_region(handle, [x], offset=1024 + 64)
        http.register_system_shared_memory("both", key, 2048, offset=1024)
        tensor = http_client.InferInput("x", [2, 4], "FP32")
        tensor.set_shared_memory("both", x.nbytes, offset=64)
        wanted = http_client.InferRequestedOutput("y")
        wanted.set_shared_memory("both", 24, offset=512)

        result = http.infer("mlp", [tensor], outputs=[wanted])

        assert result.get_output("y")["parameters"]["shared_memory_offset"] == 512
        y = client_shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=1024 + 512)
        plain = http_client.InferInput("x", [2, 4], "FP32")
        plain.set_data_from_numpy(x)
        np.testing.assert_array_equal(y, http.infer("mlp", [plain]).as_numpy("y"))


def test_tritonclient_grpc_unary_and_streaming_use_shared_memory(
    grpc: grpc_client.InferenceServerClient,
) -> None:
    xs = [RNG.standard_normal((1, 4)).astype(np.float32) for _ in range(4)]
    with client_region("in", 64) as (in_key, in_handle), client_region("out", 48) as (out_key, out_handle):
        client_shm.set_shared_memory_region(in_handle, xs)
        grpc.register_system_shared_memory("in", in_key, 64)
        grpc.register_system_shared_memory("out", out_key, 48)
        status = grpc.get_system_shared_memory_status(as_json=True)["regions"]
        assert status["in"] == {"name": "in", "key": in_key, "byte_size": "64"}

        def request(row: int) -> dict[str, Any]:
            tensor = grpc_client.InferInput("x", [1, 4], "FP32")
            tensor.set_shared_memory("in", 16, offset=16 * row)
            wanted = grpc_client.InferRequestedOutput("y")
            wanted.set_shared_memory("out", 12, offset=12 * row)
            return {"inputs": [tensor], "outputs": [wanted]}

        result = grpc.infer("mlp", **request(0))
        output = result.get_output("y")
        assert (list(output.shape), result.get_response().raw_output_contents) == ([1, 3], [b""])
        assert output.parameters["shared_memory_byte_size"].int64_param == 12
        answers: queue.Queue[Any] = queue.Queue()
        grpc.start_stream(lambda result, error: answers.put(error or result))
        for row in (1, 2, 3):
            grpc.async_stream_infer("mlp", **request(row))
        streamed = [answers.get(timeout=30) for _ in range(3)]
        grpc.stop_stream()

        assert all(isinstance(answer, grpc_client.InferResult) for answer in streamed)
        ys = client_shm.get_contents_as_numpy(out_handle, np.float32, [4, 3])
        for row, x in enumerate(xs):
            plain = grpc_client.InferInput("x", [1, 4], "FP32")
            plain.set_data_from_numpy(x)
            np.testing.assert_array_equal(ys[row], grpc.infer("mlp", [plain]).as_numpy("y")[0])


def test_grpc_inputs_in_shared_memory_mix_with_raw_inputs_and_outputs_keep_their_places(
    models: SimpleNamespace,
) -> None:
    with running(with_shared_memory(make_config(models.two_inputs, "pair"))) as worker:
        client = grpc_client.InferenceServerClient(worker.grpc_target)
        a = np.array([[1.5, 2.0]], np.float32)
        b = np.array([[3, 4]], np.int64)
        with client_region("b", b.nbytes) as (b_key, b_handle), client_region("sum", 8) as (s_key, s_handle):
            client_shm.set_shared_memory_region(b_handle, [b])
            client.register_system_shared_memory("b", b_key, b.nbytes)
            client.register_system_shared_memory("sum", s_key, 8)
            inputs = [
                grpc_client.InferInput("a", [1, 2], "FP32"),
                grpc_client.InferInput("b", [1, 2], "INT64"),
            ]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_shared_memory("b", b.nbytes)
            outputs = [grpc_client.InferRequestedOutput("sum"), grpc_client.InferRequestedOutput("neg")]
            outputs[0].set_shared_memory("sum", 8)

            result = client.infer("pair", inputs, outputs=outputs)

            np.testing.assert_array_equal(
                client_shm.get_contents_as_numpy(s_handle, np.float32, [1, 2]), a + b
            )
            np.testing.assert_array_equal(result.as_numpy("neg"), -a)


def test_bytes_tensors_travel_through_shared_memory(models: SimpleNamespace) -> None:
    words = np.array([b"alpha", b"", b"gamma"], dtype=object)
    serialized = serialize_byte_tensor(words)
    size = serialized_byte_size(serialized)
    with running(with_shared_memory(make_config(models.strings, "echo"))) as worker:
        client = http_client.InferenceServerClient(worker.url.removeprefix("http://"))
        with client_region("words", size) as (key, handle):
            client_shm.set_shared_memory_region(handle, [serialized])
            client.register_system_shared_memory("words", key, size)
            tensor = http_client.InferInput("s", [3], "BYTES")
            tensor.set_shared_memory("words", size)

            result = client.infer("echo", [tensor])

            assert result.as_numpy("t").tolist() == [b"alpha", b"", b"gamma"]


def test_an_unlinked_object_serves_until_unregistered_and_unregistering_closes_it(
    http: http_client.InferenceServerClient, shm_worker: RunningWorker
) -> None:
    x = np.ones((1, 4), np.float32)
    with raw_object("gone", x.tobytes()) as (key, path):
        http.register_system_shared_memory("gone", key, x.nbytes)
        path.unlink()
        assert len(open_descriptors_of(key)) == 1

        tensor = http_client.InferInput("x", [1, 4], "FP32")
        tensor.set_shared_memory("gone", x.nbytes)
        y = http.infer("mlp", [tensor]).as_numpy("y")
        plain = http_client.InferInput("x", [1, 4], "FP32")
        plain.set_data_from_numpy(x)
        np.testing.assert_array_equal(y, http.infer("mlp", [plain]).as_numpy("y"))

        http.unregister_system_shared_memory("gone")
        assert open_descriptors_of(key) == []


def test_metrics_count_registered_regions_and_bytes_and_metadata_lists_the_extension(
    http: http_client.InferenceServerClient, shm_worker: RunningWorker, mlp_worker: RunningWorker
) -> None:
    with raw_object("a", bytes(100)) as (a, _), raw_object("b", bytes(300)) as (b, _):
        http.register_system_shared_memory("a", a, 100)
        http.register_system_shared_memory("b", b, 200, offset=100)

        assert shm_worker.metric("kiln_worker_system_shared_memory_regions") == 2
        assert shm_worker.metric("kiln_worker_system_shared_memory_bytes") == 300
        http.unregister_system_shared_memory()
        assert shm_worker.metric("kiln_worker_system_shared_memory_regions") == 0
    assert "system_shared_memory" in http.get_server_metadata()["extensions"]
    assert "system_shared_memory" not in httpx.get(mlp_worker.url + "/v2").json()["extensions"]


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    (example,) = [
        block
        for block in blocks_of(ROOT / "inference_worker/README.md")
        if block.kind == "python" and "set_shared_memory" in block.code
    ]
    with running(with_shared_memory(make_config(image_classifier(tmp_path / "cnn.onnx"), "cnn"))) as worker:
        address = worker.url.removeprefix("http://")
        result = subprocess.run(
            [sys.executable, "-c", example.code],
            env={**os.environ, "KILN_WORKER_ADDRESS": address},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert result.returncode == 0, result.stderr
    first, _, scores = result.stdout.partition("\n")
    assert (
        "'shared_memory_region': 'example', 'shared_memory_byte_size': 40, 'shared_memory_offset': 49152"
        in first
    )
    assert len(scores.replace("[", " ").replace("]", " ").split()) == 10
