"""What goes into a worker image, decided without an engine: pins, the code hash, the build context,
container-side URLs and the docker settings' validation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments import image_build
from deployments.backends.docker import report_url_for_containers, restart_policy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of inference_worker/ that the image helpers read instead of the real one."""
    copy = tmp_path / "inference_worker"
    shutil.copytree(image_build.WORKER_DIR, copy, ignore=shutil.ignore_patterns("_generated", "__pycache__"))
    monkeypatch.setattr(image_build, "WORKER_DIR", copy)
    image_build.worker_code_hash.cache_clear()
    yield copy
    image_build.worker_code_hash.cache_clear()


def test_the_worker_requirements_are_pinned_to_the_lock_and_the_gpu_flavour_swaps_the_runtime() -> None:
    cpu = image_build.worker_requirements("cpu")
    gpu = image_build.worker_requirements("gpu")
    lock = set((ROOT / "requirements.lock").read_text().split())

    onnxruntime = next(line for line in lock if line.startswith("onnxruntime=="))
    assert onnxruntime in cpu
    assert not any(line.startswith("onnxruntime==") for line in gpu)
    assert any(line.startswith("onnxruntime-gpu==") for line in gpu)
    assert any(line.startswith("nvidia-ml-py==") for line in gpu)
    assert "numpy==" + next(line for line in lock if line.startswith("numpy==")).split("==")[1] in cpu
    assert any(line.startswith("uvloop==") and "sys_platform" in line for line in cpu)
    assert all("==" in line for line in cpu)


def test_the_worker_wheel_s_grpc_code_is_made_by_the_locked_grpcio_tools_and_runs_on_the_locked_grpcio(
    tmp_path: Path,
) -> None:
    """A newer grpcio-tools on the index (the build environment's default) makes code that refuses the
    image's grpcio: the wheel is built with the lock's."""
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().split() if "==" in line)
    source = tmp_path / "src"
    shutil.copytree(
        image_build.WORKER_DIR,
        source,
        ignore=shutil.ignore_patterns("_generated", "__pycache__", "*.egg-info"),
    )
    constraints = image_build.write_constraints(tmp_path / "constraints.txt")
    lines: list[str] = []

    image_build.build_worker_wheel(source, tmp_path / "wheels", constraints, log=lines.append, timeout_s=600)

    (wheel,) = (tmp_path / "wheels").glob("kiln_inference_worker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        code = archive.read("inference_worker/_generated/grpc_service_pb2_grpc.py").decode()
    made_by = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", code)
    assert made_by is not None, code[:400]
    assert made_by.group(1) == lock["grpcio-tools"]
    assert _version(made_by.group(1)) <= _version(lock["grpcio"])


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_worker_code_hash_is_stable_per_flavour_and_follows_the_worker_sources(worker_copy: Path) -> None:
    first = image_build.worker_code_hash("cpu")
    image_build.worker_code_hash.cache_clear()
    again = image_build.worker_code_hash("cpu")
    (worker_copy / "__pycache__").mkdir(exist_ok=True)
    (worker_copy / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"compiled")
    (worker_copy / "_generated").mkdir(exist_ok=True)
    (worker_copy / "_generated" / "grpc_service_pb2.py").write_text("# generated at wheel build\n")
    image_build.worker_code_hash.cache_clear()
    ignoring_build_output = image_build.worker_code_hash("cpu")
    with (worker_copy / "batcher.py").open("a") as source:
        source.write("\n# a change\n")
    image_build.worker_code_hash.cache_clear()
    changed = image_build.worker_code_hash("cpu")

    assert first == again == ignoring_build_output
    assert changed != first
    assert image_build.worker_code_hash("gpu") != changed


def test_the_build_context_holds_the_dockerfile_the_wheelhouse_the_model_and_its_config(
    tmp_path: Path,
) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "kiln_inference_worker-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (wheelhouse / "requirements.txt").write_text("onnxruntime==1.0\n")
    (wheelhouse / ".complete").write_text("done\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes")
    context = tmp_path / "context.tar"

    image_build.write_context(
        path=context,
        flavour="cpu",
        wheelhouse=wheelhouse,
        onnx_path=model,
        model_config={"model": "cnn", "version": 3, "sha256": "ab" * 32},
    )

    with tarfile.open(context) as tar:
        members = {m.name: m for m in tar.getmembers()}
        dockerfile = tar.extractfile("Dockerfile")
        config = tar.extractfile("model/model.json")
        assert dockerfile is not None
        assert config is not None
        dockerfile_text = dockerfile.read().decode()
        config_data: dict[str, Any] = json.loads(config.read())
    assert sorted(members) == [
        "Dockerfile",
        "model/model.json",
        "model/model.onnx",
        "wheelhouse/kiln_inference_worker-0.1.0-py3-none-any.whl",
        "wheelhouse/requirements.txt",
    ]
    assert all(m.uid == 0 and m.uname == "root" for m in members.values())
    assert dockerfile_text == image_build.DOCKERFILES["cpu"].read_text()
    assert config_data == {"model": "cnn", "version": 3, "sha256": "ab" * 32}


def test_both_dockerfiles_are_multi_stage_non_root_health_checked_and_install_offline() -> None:
    for flavour, path in image_build.DOCKERFILES.items():
        text = path.read_text()
        assert text.count("FROM ${BASE_IMAGE}") == 2, flavour
        assert "ARG BASE_IMAGE" in text
        assert "USER 10001:10001" in text
        assert "HEALTHCHECK" in text
        assert "/v2/health/ready" in text
        assert "curl" not in text
        assert text.count("--no-index --find-links /tmp/wheelhouse") == 2
        for label in ("kiln.model.name", "kiln.model.version", "kiln.model.sha256", "kiln.worker.version"):
            assert label in text, (flavour, label)
    assert not list((ROOT / "platform").rglob("*.py"))


def test_a_bridged_container_reports_to_the_engines_host_or_to_the_configured_url(settings: Any) -> None:
    settings.KILN_DOCKER_PUBLIC_URL = ""
    loopback = report_url_for_containers("http://127.0.0.1:8000/api/v1/workers/7/reports/")
    elsewhere = report_url_for_containers("https://kiln.example.com/api/v1/workers/7/reports/")
    host_network = report_url_for_containers("http://127.0.0.1:8000/api/v1/workers/7/reports/", bridge=False)
    settings.KILN_DOCKER_PUBLIC_URL = "http://web:8000/"
    configured = report_url_for_containers("http://127.0.0.1:8000/api/v1/workers/7/reports/")

    assert loopback == "http://host.docker.internal:8000/api/v1/workers/7/reports/"
    assert host_network == "http://127.0.0.1:8000/api/v1/workers/7/reports/"
    assert elsewhere == "https://kiln.example.com/api/v1/workers/7/reports/"
    assert configured == "http://web:8000/api/v1/workers/7/reports/"


def test_the_restart_policy_setting_becomes_the_engines_policy(settings: Any) -> None:
    settings.KILN_DOCKER_RESTART_POLICY = "on-failure:3"
    on_failure = restart_policy()
    settings.KILN_DOCKER_RESTART_POLICY = "no"

    assert on_failure == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert restart_policy() == {"Name": "no", "MaximumRetryCount": 0}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "KILN_DOCKER_NETWORK",
            "none",
            "KILN_DOCKER_NETWORK='none': use host, bridge or the name of a Docker",
        ),
        ("KILN_DOCKER_RESTART_POLICY", "sometimes", "use no, on-failure[:N], unless-stopped or always"),
        ("KILN_DOCKER_MEMORY_LIMIT", "lots", "use a size such as 512m or 4g"),
        ("KILN_SWARM_RESERVE_MEMORY", "1.5g", "KILN_SWARM_RESERVE_MEMORY='1.5g': use a size such as 512m"),
        ("KILN_DOCKER_CPUS", "-1", "KILN_DOCKER_CPUS=-1.0 is below the minimum"),
    ],
)
def test_bad_docker_settings_stop_the_start_with_the_variable_named(
    variable: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SECRET_KEY": "x",
            variable: value,
        },
    )

    assert result.returncode != 0
    assert message in result.stderr


def test_a_gpu_worker_asks_the_engine_for_its_gpus_with_the_limits_and_runs_on_the_first_it_gets(
    settings: Any, tmp_path: Path
) -> None:
    from deployments.backends.base import WorkerSpec
    from deployments.backends.docker import DockerBackend
    from inference_worker.contracts.batching import BatchingConfig
    from inference_worker.contracts.launch import LaunchSpec, parse_launch

    settings.KILN_DOCKER_NETWORK = "host"
    settings.KILN_DOCKER_MEMORY_LIMIT = "2g"
    settings.KILN_DOCKER_CPUS = 1.5
    settings.KILN_DOCKER_RESTART_POLICY = "on-failure:2"
    settings.KILN_INSTANCE_ID = "kiln-a"
    spec = WorkerSpec(
        worker_id=12,
        deployment="cnn-prod",
        variant="primary",
        onnx_path=tmp_path / "m.onnx",
        gpu_ids=(2, 3),
        launch=LaunchSpec(
            model_name="cnn-prod",
            model_version="3",
            model_sha256="ab" * 32,
            batching=BatchingConfig(
                max_batch_size=8, max_queue_delay_ms=1.0, preferred_batch_sizes=(4, 8), max_queue_size=64
            ),
            report_url="http://127.0.0.1:8000/api/v1/workers/12/reports/",
            report_token="secret-token",
            report_interval_s=5.0,
            worker_id="12",
        ),
        image="kiln-worker/cnn:v3-gpu-0123456789ab",
    )

    options = DockerBackend().container_options(None, spec, bind="127.0.0.1", http_port=4001, grpc_port=4002)

    (request,) = options["device_requests"]
    args = options["command"]
    assert (request["DeviceIDs"], request["Capabilities"]) == (["2", "3"], [["gpu"]])
    assert args[args.index("--device") + 1] == "cuda:0"
    assert args[args.index("--model-path") + 1] == "/opt/kiln/model/model.onnx"
    assert args[args.index("--report-url") + 1] == spec.launch.report_url
    assert parse_launch(args, options["environment"]).batching == spec.launch.batching
    assert "secret-token" not in args
    assert options["environment"]["KILN_WORKER_REPORT_TOKEN"] == "secret-token"
    assert (options["mem_limit"], options["nano_cpus"]) == ("2g", 1_500_000_000)
    assert options["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert options["network_mode"] == "host"
    assert options["name"] == "kiln-a-worker-12"
    assert options["labels"] == {
        "kiln.instance": "kiln-a",
        "kiln.worker": "12",
        "kiln.deployment": "cnn-prod",
        "kiln.variant": "primary",
        "kiln.version": "3",
    }


@pytest.mark.django_db
def test_an_image_the_engine_lost_is_rebuilt_on_a_fresh_clock_not_failed_by_the_sweep(owner: Any) -> None:
    """A build from hours ago that the engine lost is queued again and timed from its new start."""
    from datetime import timedelta

    from django.utils import timezone

    from deployments.models import ImageStatus, WorkerImage
    from deployments.services import images
    from tests.support.versions import ready_version

    long_ago = timezone.now() - timedelta(hours=3)
    image = WorkerImage.objects.create(
        key="k" * 64,
        version=ready_version(owner),
        flavour="cpu",
        worker_code_hash="c" * 64,
        base_image="kiln/python-base:bookworm",
        tag="kiln-worker/cnn:1-cpu",
        image_id="sha256:" + "a" * 64,
        status=ImageStatus.READY,
        progress=100,
        log="Step 1/9 ...",
        started_at=long_ago,
        finished_at=long_ago + timedelta(minutes=2),
    )

    images.forget_missing_image(tag=image.tag)
    image.refresh_from_db()
    assert (image.status, image.image_id, image.log, image.progress) == (ImageStatus.QUEUED, "", "", 0)
    assert image.started_at is None
    assert image.finished_at is None

    claimed = images._claim(image.pk, str(image.attempt))  # what the build job does first
    assert claimed is not None
    assert claimed.started_at is not None
    assert claimed.started_at > long_ago + timedelta(hours=2)
    assert images.sweep_image_builds()["failed"] == 0
    image.refresh_from_db()
    assert image.status == ImageStatus.BUILDING
