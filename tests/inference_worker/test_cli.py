"""The command line: options from flags and environment, refusals, the real process and SIGTERM."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_worker.cli import build_parser, config_from_args, main, serve_options
from inference_worker.config import ConfigError, SharedMemoryConfig
from tests.support.polling import wait_for
from tests.support.workers import BIG_K, make_config, running, square_request

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KILN_WORKER_"):
            monkeypatch.delenv(name)


def serve_args(models: SimpleNamespace, *extra: str) -> list[str]:
    return ["serve", "--model-name", "mlp", "--model-path", str(models.mlp), *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--max-batch-size", "many"],
            "--max-batch-size (or KILN_WORKER_MAX_BATCH_SIZE): invalid value 'many'",
        ),
        (["--max-batch-size", "0"], "--max-batch-size: must be between 1 and 4096"),
        (
            ["--preferred-batch-sizes", "8,64"],
            "--preferred-batch-sizes: every size must be between 1 and the max batch size (32); 64 is not",
        ),
        (["--preferred-batch-sizes", "16,8"], "distinct and increasing"),
        (["--device", "tpu:0"], "--device: 'tpu:0' is not 'cpu' or 'cuda:N'"),
        (["--http-port", "70000"], "--http-port: must be between 0 and 65535"),
        (["--model-sha256", "abc"], "--model-sha256: expected 64 lowercase hexadecimal digits"),
        (["--report-url", "http://platform:8000/r"], "--report-token: required with --report-url"),
        (["--report-url", "file:///etc/passwd", "--report-token", "t"], "--report-url: expected an http"),
        (
            ["--request-timeout-ms", "nan"],
            "--request-timeout-ms (or KILN_WORKER_REQUEST_TIMEOUT_MS): invalid",
        ),
        (["--intra-op-spinning", "maybe"], "--intra-op-spinning"),
        (["--inline-below-us", "-1"], "--inline-below-us: must be between 0 and 100000, not -1"),
        (["--max-shm-regions", "0"], "--max-shm-regions: must be between 1 and 4096, not 0"),
        (["--system-shared-memory", "auto"], "--system-shared-memory (or KILN_WORKER_SYSTEM_SHARED_MEMORY)"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_an_invalid_option_exits_2_with_one_line_naming_it(
    models: SimpleNamespace, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(serve_args(models, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("inference-worker: error: ")
    assert message in err


def test_unknown_flags_and_missing_required_options_exit_2(
    models: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*serve_args(models), "--turbo"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["serve", "--model-path", str(models.mlp)]) == 2
    assert "--model-name (or KILN_WORKER_MODEL_NAME) is required" in capsys.readouterr().err
    assert main(["serve", "--model-name", "m", "--model-path", "/nonexistent.onnx"]) == 2
    assert "--model-path: cannot read '/nonexistent.onnx'" in capsys.readouterr().err


def test_every_option_can_come_from_the_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KILN_WORKER_MODEL_NAME": "resnet",
        "KILN_WORKER_MODEL_PATH": "/models/resnet.onnx",
        "KILN_WORKER_MODEL_VERSION": "7",
        "KILN_WORKER_HOST": "0.0.0.0",
        "KILN_WORKER_HTTP_PORT": "9000",
        "KILN_WORKER_GRPC_PORT": "-1",
        "KILN_WORKER_DEVICE": "cuda:1",
        "KILN_WORKER_INSTANCES": "2",
        "KILN_WORKER_INTRA_OP_THREADS": "3",
        "KILN_WORKER_INTRA_OP_SPINNING": "off",
        "KILN_WORKER_INLINE_BELOW_US": "75",
        "KILN_WORKER_MAX_BATCH_SIZE": "64",
        "KILN_WORKER_MAX_QUEUE_DELAY_MS": "2.5",
        "KILN_WORKER_PREFERRED_BATCH_SIZES": "8,16,32",
        "KILN_WORKER_MAX_QUEUE_SIZE": "10",
        "KILN_WORKER_REQUEST_TIMEOUT_MS": "500",
        "KILN_WORKER_MAX_BODY_BYTES": "2048",
        "KILN_WORKER_MAX_GRPC_MESSAGE_BYTES": "4096",
        "KILN_WORKER_MAX_TENSOR_ELEMENTS": "100",
        "KILN_WORKER_MAX_QUEUE_BYTES": "1048576",
        "KILN_WORKER_SYSTEM_SHARED_MEMORY": "on",
        "KILN_WORKER_MAX_SHM_REGIONS": "5",
        "KILN_WORKER_MAX_SHM_BYTES": "65536",
        "KILN_WORKER_DRAIN_TIMEOUT_S": "3",
        "KILN_WORKER_SHUTDOWN_DELAY_S": "4",
        "KILN_WORKER_LISTEN_FILE": "/tmp/listen.json",
        "KILN_WORKER_REPORT_URL": "https://platform/api/v1/workers/9/reports/",
        "KILN_WORKER_REPORT_TOKEN": "tok",
        "KILN_WORKER_REPORT_INTERVAL_S": "1.5",
        "KILN_WORKER_WORKER_ID": "w-9",
        "KILN_WORKER_LOG_LEVEL": "warning",
        "KILN_WORKER_MODEL_SHA256": "a" * 64,
        "KILN_WORKER_WARMUP_INPUTS": '{"shapes": {"image": [-1, 3, 8, 8]}, "int_high": 10}',
        "KILN_WORKER_CLASS_LABELS": '{"logits": ["cat", "dog"]}',
    }
    assert sorted(env) == sorted(option.env for option in serve_options())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config, level = config_from_args(build_parser().parse_args(["serve", "--max-batch-size", "48"]))
    assert level == "warning"
    assert (config.model.name, str(config.model.path), config.model.version) == (
        "resnet",
        "/models/resnet.onnx",
        "7",
    )
    assert (config.model.device, config.model.instance_count, config.model.intra_op_num_threads) == (
        "cuda:1",
        2,
        3,
    )
    assert config.model.allow_spinning is False
    assert config.model.inline_below_us == 75
    assert config.model.sha256 == "a" * 64
    assert config.model.warmup is not None
    assert (dict(config.model.warmup.shapes), config.model.warmup.int_high) == ({"image": (-1, 3, 8, 8)}, 10)
    assert config.model.class_labels.of("logits") == ("cat", "dog")
    assert config.batching.max_batch_size == 48
    assert config.batching.preferred_batch_sizes == (8, 16, 32)
    assert config.batching.max_queue_delay_microseconds == 2500
    assert (config.batching.max_queue_size, config.batching.default_timeout_microseconds) == (10, 500_000)
    assert (config.server.host, config.server.http_port, config.server.grpc_port) == ("0.0.0.0", 9000, -1)
    assert config.server.drain_timeout_s == 3
    assert (config.server.shutdown_delay_s, config.server.listen_file) == (4, "/tmp/listen.json")
    assert (config.limits.max_body_bytes, config.limits.max_grpc_message_bytes) == (2048, 4096)
    assert (config.limits.max_tensor_elements, config.limits.max_queue_bytes) == (100, 1048576)
    assert (config.report.url, config.report.token) == ("https://platform/api/v1/workers/9/reports/", "tok")
    assert (config.report.interval_s, config.report.worker_id) == (1.5, "w-9")
    assert config.shared_memory == SharedMemoryConfig(enabled=True, max_regions=5, max_bytes=65536)


def test_the_report_token_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("KILN_WORKER_REPORT_TOKEN_FILE", str(secret))
    args = build_parser().parse_args(
        ["serve", "--model-name", "m", "--model-path", "m.onnx", "--report-url", "http://p/"]
    )
    config, _ = config_from_args(args)
    assert config.report.token == "from-a-file"
    assert "from-a-file" not in repr(config)


def test_defaults_bind_localhost_and_batch_without_delay() -> None:
    config, level = config_from_args(
        build_parser().parse_args(["serve", "--model-name", "m", "--model-path", "m"])
    )
    assert (config.server.host, config.server.http_port, config.server.grpc_port) == ("127.0.0.1", 8080, 8081)
    assert (config.batching.max_batch_size, config.batching.max_queue_delay_microseconds) == (32, 0)
    assert config.report.url is None
    assert config.shared_memory.enabled is False  # like Triton's --allow-client-shm: asked for, never assumed
    assert level == "info"


def test_a_matching_digest_serves(models: SimpleNamespace) -> None:
    digest = hashlib.sha256(models.mlp.read_bytes()).hexdigest()
    with running(make_config(models.mlp, sha256=digest)) as worker:
        assert httpx.get(worker.url + "/v2/health/ready").status_code == 200


@contextmanager
def worker_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``python -m inference_worker serve`` on free ports; yields it with its HTTP URL and gRPC target."""
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_worker", "serve", "--http-port", "0", "--grpc-port", "0", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            found = re.search(r"listening http=([\d.]+:\d+) grpc=([\d.]+:\d+)", line)
            if found:
                break
        else:
            raise AssertionError("the worker never listened")
        yield process, f"http://{found[1]}", found[2]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        process.stderr.close()  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_digest_mismatch_refuses_to_start(models: SimpleNamespace) -> None:
    command = [sys.executable, "-m", "inference_worker", *serve_args(models, "--model-sha256", "0" * 64)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"inference-worker: error: --model-sha256: mlp.onnx has digest "
        f"{hashlib.sha256(models.mlp.read_bytes()).hexdigest()}, expected {'0' * 64}; refusing to serve it"
    ]


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits_0(models: SimpleNamespace) -> None:
    args = ("--model-name", "square", "--model-path", str(models.square), "--intra-op-threads", "1")
    with worker_process(*args) as (process, url, grpc_target), ThreadPoolExecutor(3) as pool:
        wait_for(lambda: httpx.get(url + "/v2/health/ready").status_code == 200)
        body, headers = square_request(BIG_K)

        def post() -> httpx.Response:
            return httpx.post(url + "/v2/models/square/infer", content=body, headers=headers, timeout=60)

        in_flight = [pool.submit(post) for _ in range(3)]
        wait_for(
            lambda: (
                'kiln_worker_in_flight_requests{model="square",version="1"} 3.0'
                in httpx.get(url + "/metrics").text
            )
        )
        process.send_signal(signal.SIGTERM)
        with grpc.insecure_channel(grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = wait_for(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest()).status
                    == health_pb2.HealthCheckResponse.NOT_SERVING
                )
            )
            assert status
        assert [future.result().status_code for future in in_flight] == [200] * 3
        assert process.wait(30) == 0
        assert process.stderr is not None
        tail = process.stderr.read()
        assert "draining" in tail
        assert "stopped" in tail


@pytest.mark.slow
def test_a_model_onnx_runtime_cannot_load_exits_1_without_ever_being_ready(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model at all")
    command = [
        sys.executable,
        "-m",
        "inference_worker",
        "serve",
        "--model-name",
        "g",
        "--model-path",
        str(garbage),
    ]
    command += ["--http-port", "0", "--grpc-port", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "ONNX Runtime cannot load the model" in result.stderr
    assert "ready:" not in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "--class-labels: must be JSON"),
        ('{"logits": ["cat", ""]}', "--class-labels.logits[1]: must be 1-256 characters"),
        ('["cat"]', "--class-labels: must be an object"),
    ],
)
def test_class_labels_the_worker_cannot_read_refuse_to_start(value: str, message: str) -> None:
    args = ["serve", "--model-name", "m", "--model-path", "m.onnx", "--class-labels", value]

    with pytest.raises(ConfigError) as refused:
        config_from_args(build_parser().parse_args(args))

    assert str(refused.value).startswith(message)
