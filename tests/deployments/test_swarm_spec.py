"""The Swarm service a variant becomes, as the Engine API receives it (no engine needed): the worker's
command and per-task identity, health check, resources and GPUs, placement, update policy, labels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deployments.backends import swarm_spec as sp
from deployments.backends.base import TASK_ID, ServiceSpec, WorkerSpec
from deployments.backends.docker_images import registry_of
from inference_worker.contracts.batching import BatchingConfig
from inference_worker.contracts.launch import LaunchSpec

SECRET = sp.Secret(id="sec123", name="kiln-7-fraud-primary-ab12")


def _spec(**worker: Any) -> ServiceSpec:
    launch = WorkerSpec(
        worker_id=0,
        deployment="fraud",
        variant="primary",
        onnx_path=Path("/store/x.onnx"),
        gpu_ids=(),
        launch=LaunchSpec(
            model_name="fraud",
            model_version="3",
            model_sha256="a" * 64,
            batching=BatchingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16)),
            report_url=f"http://platform:8000/api/v1/tasks/{TASK_ID}/reports/",
            report_interval_s=5.0,
            worker_id="0",
        ),
        image="registry:5000/kiln-worker/fraud:v3-cpu-abc",
        labels={"deployment": "fraud", "variant": "primary", "version": "3"},
    )
    return ServiceSpec(
        variant_id=7,
        replicas=4,
        spec_hash="f" * 32,
        worker=replace(launch, **worker),
        constraints=("node.labels.kiln.gpu==true",),
        spread=("node.labels.zone",),
    )


@pytest.fixture
def swarm_settings(settings: Any) -> Any:
    settings.KILN_INSTANCE_ID = "kiln"
    settings.KILN_SWARM_BIND_HOST = "0.0.0.0"
    settings.KILN_SWARM_SHUTDOWN_DELAY_S = 10.0
    settings.KILN_DRAIN_GRACE_S = 30.0
    settings.KILN_DOCKER_MEMORY_LIMIT = "2g"
    settings.KILN_DOCKER_CPUS = 1.5
    settings.KILN_SWARM_RESERVE_MEMORY = "512m"
    settings.KILN_SWARM_RESERVE_CPUS = 0.5
    settings.KILN_DOCKER_PUBLIC_URL = ""
    return settings


def test_every_task_runs_the_worker_on_a_free_port_with_its_own_identity_from_the_task(
    swarm_settings: Any,
) -> None:
    template = sp.task_template(_spec(), secret=SECRET)
    container = template["ContainerSpec"]
    args, env = container["Args"], container["Env"]
    assert args[0] == "serve"
    assert (args[args.index("--host") + 1], args[args.index("--http-port") + 1]) == ("0.0.0.0", "0")
    assert args[args.index("--grpc-port") + 1] == "0"
    assert args[args.index("--model-path") + 1] == "/opt/kiln/model/model.onnx"
    assert "--report-url" not in args
    assert "--worker-id" not in args
    assert "KILN_WORKER_REPORT_URL=http://platform:8000/api/v1/tasks/{{.Task.ID}}/reports/" in env
    assert "KILN_WORKER_WORKER_ID={{.Task.ID}}" in env
    assert "KILN_WORKER_REPORT_TOKEN_FILE=/run/secrets/kiln-report-token" in env
    assert "KILN_WORKER_SHUTDOWN_DELAY_S=10.0" in env
    assert container["Secrets"] == [
        {
            "SecretID": "sec123",
            "SecretName": "kiln-7-fraud-primary-ab12",
            "File": {"Name": "kiln-report-token", "UID": "10001", "GID": "10001", "Mode": 0o400},
        }
    ]
    assert container["StopGracePeriod"] == 45 * 10**9  # the shutdown delay, the drain, a margin
    assert container["Healthcheck"]["Test"][:3] == ["CMD", "python3", "-c"]
    assert sp.LISTEN_FILE in container["Healthcheck"]["Test"][3]
    assert container["Labels"] == {
        "kiln.deployment": "fraud",
        "kiln.variant": "primary",
        "kiln.version": "3",
        "kiln.instance": "kiln",
        "kiln.variant-id": "7",
        "kiln.spec": "f" * 32,
    }
    assert template["Networks"] == [{"Target": "host"}]


def test_limits_reservations_restarts_and_placement_come_from_the_settings_and_the_variant(
    swarm_settings: Any,
) -> None:
    template = sp.task_template(_spec(), secret=SECRET)
    assert template["Resources"] == {
        "Limits": {"NanoCPUs": 1_500_000_000, "MemoryBytes": 2 * 1024**3},
        "Reservations": {"NanoCPUs": 500_000_000, "MemoryBytes": 512 * 1024**2},
    }
    assert template["RestartPolicy"]["Condition"] == "any"
    assert template["Placement"] == {
        "Constraints": ["node.labels.kiln.gpu==true"],
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
    }
    update = sp.update_config()
    assert (update["Order"], update["FailureAction"], update["Parallelism"]) == ("start-first", "rollback", 1)


def test_a_gpu_variant_reserves_generic_gpus_and_runs_on_the_first_one_it_is_given(
    swarm_settings: Any,
) -> None:
    template = sp.task_template(_spec(gpu_ids=(2, 3)), secret=SECRET)
    reserved = template["Resources"]["Reservations"]["GenericResources"]
    assert reserved == [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}]
    args = template["ContainerSpec"]["Args"]
    assert args[args.index("--device") + 1] == "cuda:0"


def test_the_fingerprint_changes_with_what_is_sent_not_with_the_replica_count(swarm_settings: Any) -> None:
    spec = _spec()
    first = sp.fingerprint(spec, sp.task_template(spec, secret=SECRET))
    scaled = replace(spec, replicas=1)
    assert sp.fingerprint(scaled, sp.task_template(scaled, secret=SECRET)) == first
    swarm_settings.KILN_SWARM_SHUTDOWN_DELAY_S = 20.0
    assert sp.fingerprint(spec, sp.task_template(spec, secret=SECRET)) != first


def test_service_names_fit_swarms_limit_and_registries_are_read_from_image_names(swarm_settings: Any) -> None:
    swarm_settings.KILN_INSTANCE_ID = "a-very-long-platform-instance-name-used-by-the-tests-1234567890"
    name = sp.service_name(replace(_spec(), worker=replace(_spec().worker, deployment="d" * 64)))
    assert len(name) <= 63
    assert name.startswith("a-very-long-platform-instance-name-used-7-ddd")
    assert registry_of("127.0.0.1:5000/kiln-worker/cnn:v1") == "127.0.0.1:5000"
    assert registry_of("registry.example.com/kiln-worker") == "registry.example.com"
    assert registry_of("localhost/kiln-worker") == "localhost"
    assert registry_of("kiln-worker/cnn:v1") == ""
    assert registry_of("kiln-worker") == ""
