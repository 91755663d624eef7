"""The worker on a real NVIDIA GPU: CUDA provider with I/O binding, batched answers equal to the
CPU's, and NVML memory and utilisation in /metrics.

Skipped where ONNX Runtime has no CUDA provider (every CI machine); run on a GPU machine with
onnxruntime-gpu and nvidia-ml-py installed. This file imports nothing of Django, so it also runs
with ``pytest -c /dev/null --noconftest tests/gpu`` on a machine that has only the worker's
dependencies.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.workers import make_config, running, v2_body

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="ONNX Runtime has no CUDA provider on this machine (onnxruntime-gpu and an NVIDIA GPU needed)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(11)
W1 = RNG.standard_normal((64, 256)).astype(np.float32) * 0.1
B1 = RNG.standard_normal(256).astype(np.float32) * 0.1
W2 = RNG.standard_normal((256, 10)).astype(np.float32) * 0.1


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP 64-256-10 with a dynamic batch dimension."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Add", ["h", "B1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp_gpu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("gpu") / "mlp.onnx"
    onnx.save(model, path)
    return path


def expected(x: np.ndarray) -> np.ndarray:
    y: np.ndarray = np.maximum(x @ W1 + B1, 0) @ W2
    return y


def test_served_on_cuda_with_batched_answers_equal_to_the_cpu_and_gpu_stats(model_path: Path) -> None:
    config = make_config(model_path, name="mlp-gpu", device="cuda:0")
    with running(config) as worker:
        metadata = httpx.get(worker.url + "/v2/models/mlp-gpu", timeout=10)
        assert metadata.status_code == 200, metadata.text

        def one(i: int) -> None:
            x = RNG.standard_normal((1 + i % 4, 64)).astype(np.float32)
            answer = httpx.post(worker.url + "/v2/models/mlp-gpu/infer", json=v2_body({"x": x}), timeout=30)
            assert answer.status_code == 200, answer.text
            (out,) = answer.json()["outputs"]
            y = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
            np.testing.assert_allclose(y, expected(x), rtol=1e-3, atol=1e-3)

        # Concurrent requests so the dynamic batcher forms batches on the GPU path (I/O binding).
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(256)))

        assert worker.metric("kiln_worker_device_memory_total_bytes") > 0, "no NVML memory gauge in /metrics"
        assert worker.metric("kiln_worker_device_memory_used_bytes") > 0


def test_the_command_line_serves_on_cuda_and_says_so(model_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference_worker",
            "serve",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--model-path",
            str(model_path),
            "--model-name",
            "mlp-gpu",
            "--device",
            "cuda:0",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        url = loaded = None
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"listening http=([\d.]+:\d+)", line)
            url = f"http://{found.group(1)}" if found else url
            loaded = line if " loaded mlp.onnx" in line else loaded
            if url and loaded:
                break
        assert url, "".join(lines)
        assert loaded, "".join(lines)
        assert "on CUDAExecutionProvider" in loaded, loaded
        x = RNG.standard_normal((3, 64)).astype(np.float32)
        answer = httpx.post(url + "/v2/models/mlp-gpu/infer", json=v2_body({"x": x}), timeout=30)
        assert answer.status_code == 200, answer.text
        (out,) = answer.json()["outputs"]
        np.testing.assert_allclose(np.asarray(out["data"]).reshape(3, 10), expected(x), rtol=1e-3, atol=1e-3)
        assert "running on the CPU" not in "".join(lines)
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_a_convolution_runs_through_cudnn_with_answers_equal_to_the_cpu(tmp_path: Path) -> None:
    """A 3x3 convolution (cuDNN) with two instances on the same GPU, under concurrent load."""
    kernel = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "cnn_gpu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16, 16])],
        initializer=[numpy_helper.from_array(kernel, "K")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "cnn.onnx"
    onnx.save(model, path)
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    config = make_config(path, name="cnn-gpu", device="cuda:0", instance_count=2)
    with running(config) as worker:

        def one(i: int) -> None:
            x = RNG.standard_normal((1 + i % 3, 3, 16, 16)).astype(np.float32)
            answer = httpx.post(worker.url + "/v2/models/cnn-gpu/infer", json=v2_body({"x": x}), timeout=30)
            assert answer.status_code == 200, answer.text
            (out,) = answer.json()["outputs"]
            y = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
            np.testing.assert_allclose(y, cpu.run(None, {"x": x})[0], rtol=1e-3, atol=1e-3)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(128)))
