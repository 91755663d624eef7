"""A variant's Swarm service as the Engine API spells it: pure functions of the spec and the settings.

Every replica of a service runs the same command, so what differs per replica comes from the
orchestrator at start: Swarm expands ``{{.Task.ID}}`` in environment values, which gives each
worker its identity in reports and its own report URL. The workers use host networking and
bind port 0: a free port on whatever node they land on, so an old and a new task of one slot
never collide on a host (the ports reach the platform in the worker's reports; a health check
reads them from the listen file). The report token is a Swarm secret mounted as a file.

Nothing here talks to the engine; ``swarm.py`` does. ``fingerprint`` decides whether a running
service must be updated: it covers everything that is sent, so a changed setting rolls the tasks
as a changed version does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from docker.types import (
    ContainerSpec,
    DriverConfig,
    Healthcheck,
    Placement,
    Resources,
    RestartPolicy,
    RollbackConfig,
    SecretReference,
    TaskTemplate,
    UpdateConfig,
)
from docker.utils import parse_bytes

from deployments.backends.base import TASK_ID, ServiceSpec
from deployments.backends.docker import report_url_for_containers
from deployments.image_build import MODEL_PATH_IN_IMAGE
from inference_worker.contracts import worker_options as options
from inference_worker.contracts.options import OptionField
from inference_worker.contracts.worker_options import ENV_PREFIX

GPU_RESOURCE = "NVIDIA-GPU"
"""The generic resource GPU nodes advertise (``dockerd --node-generic-resource NVIDIA-GPU=<uuid>``)."""
LISTEN_FILE = "/tmp/kiln-worker-listen.json"  # noqa: S108 - inside the container, written by uid 10001
TOKEN_FILE = "kiln-report-token"  # noqa: S105 - a file name, not a secret
SECOND_NS = 1_000_000_000
SWARM_TASK_ID = "{{.Task.ID}}"

# Labels of services, their tasks' containers and secrets: what the platform owns.
INSTANCE = "kiln.instance"
VARIANT_ID = "kiln.variant-id"
SPEC = "kiln.spec"
FINGERPRINT = "kiln.service-spec"
TOKEN_DIGEST = "kiln.report-token-sha256"  # noqa: S105 - a label name
ROLLED_BACK_FROM = "kiln.rolled-back-from"
SECRET = "kiln.secret"  # noqa: S105 - a label name


@dataclass(frozen=True)
class Secret:
    """The Swarm secret holding a service's report token."""

    id: str
    name: str


def service_name(spec: ServiceSpec) -> str:
    """``<instance>-<variant id>-<deployment>-<variant>``, cut to Swarm's 63 characters."""
    instance = re.sub(r"[^a-zA-Z0-9-]", "-", settings.KILN_INSTANCE_ID)[:40].strip("-") or "kiln"
    name = f"{instance}-{spec.variant_id}-{spec.worker.deployment}-{spec.worker.variant}"
    return name[:63].rstrip("-")


def service_labels(
    spec: ServiceSpec, *, token_digest: str, secret: Secret, fingerprint: str
) -> dict[str, str]:
    return {
        INSTANCE: settings.KILN_INSTANCE_ID,
        VARIANT_ID: str(spec.variant_id),
        "kiln.deployment": spec.worker.deployment,
        "kiln.variant": spec.worker.variant,
        SPEC: spec.spec_hash,
        FINGERPRINT: fingerprint,
        TOKEN_DIGEST: token_digest,
        SECRET: secret.name,
    }


def container_labels(spec: ServiceSpec) -> dict[str, str]:
    """Every task's container carries what it runs: its variant, version and configuration."""
    labels = {f"kiln.{key}": value for key, value in spec.worker.labels.items()}
    return {
        **labels,
        INSTANCE: settings.KILN_INSTANCE_ID,
        VARIANT_ID: str(spec.variant_id),
        "kiln.version": spec.worker.launch.model_version,
        SPEC: spec.spec_hash,
    }


def worker_command(spec: ServiceSpec) -> tuple[list[str], list[str]]:
    """The worker's arguments and environment: identity and report URL come per task, through templates."""
    report_url = report_url_for_containers(spec.worker.launch.report_url, bridge=False)
    placed = spec.worker.placed(
        host=settings.KILN_SWARM_BIND_HOST, http_port=0, grpc_port=0, model_path=MODEL_PATH_IN_IMAGE
    )
    per_task: list[tuple[OptionField[Any], object]] = [
        (options.REPORT_URL, report_url.replace(TASK_ID, SWARM_TASK_ID)),
        (options.WORKER_ID, SWARM_TASK_ID),
        (options.LISTEN_FILE, LISTEN_FILE),
        (options.SHUTDOWN_DELAY_S, settings.KILN_SWARM_SHUTDOWN_DELAY_S),
        (options.DRAIN_TIMEOUT_S, settings.KILN_DRAIN_GRACE_S),
    ]
    env = [f"{option.env(ENV_PREFIX)}={option.to_text(value)}" for option, value in per_task]
    env.append(f"{options.REPORT_TOKEN.env(ENV_PREFIX)}_FILE=/run/secrets/{TOKEN_FILE}")
    # Left out of the command line (empty values are), so the per-task variables above apply.
    return replace(placed, report_url="", worker_id="").argv(), env


def task_template(spec: ServiceSpec, *, secret: Secret) -> dict[str, Any]:
    """The service's task template: container, health check, resources, restarts, placement, network."""
    args, env = worker_command(spec)
    grace_s = settings.KILN_SWARM_SHUTDOWN_DELAY_S + settings.KILN_DRAIN_GRACE_S + 5
    container = ContainerSpec(
        image=spec.worker.image,
        args=args,
        env=env,
        labels=container_labels(spec),
        stop_grace_period=int(grace_s * SECOND_NS),
        secrets=[
            SecretReference(secret.id, secret.name, filename=TOKEN_FILE, uid="10001", gid="10001", mode=0o400)
        ],
        healthcheck=Healthcheck(
            test=[
                "CMD",
                "python3",
                "-c",
                _health_check(settings.KILN_SWARM_BIND_HOST),
            ],
            interval=int(settings.KILN_SWARM_HEALTH_INTERVAL_S * SECOND_NS),
            timeout=3 * SECOND_NS,
            retries=3,
            start_period=int(settings.KILN_WORKER_START_TIMEOUT_S * SECOND_NS),
        ),
    )
    template = TaskTemplate(
        container_spec=container,
        resources=_resources(spec),
        restart_policy=RestartPolicy(
            condition="any", delay=int(settings.KILN_SWARM_RESTART_DELAY_S * SECOND_NS), max_attempts=0
        ),
        placement=Placement(
            constraints=list(spec.constraints) or None,
            preferences=[("spread", label) for label in spec.spread] or None,
        ),
        log_driver=DriverConfig(
            "json-file", {"max-size": f"{settings.KILN_WORKER_LOG_MAX_BYTES // 1024}k", "max-file": "2"}
        ),
        networks=["host"],
    )
    return dict(template)


def _health_check(bind: str) -> str:
    """The readiness check, run by the image's Python (the worker and its contracts are installed there):
    the port comes from the listen file, the address from where the worker binds."""
    host = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind  # noqa: S104 - compared, not bound
    return (
        "import json, urllib.request\n"
        "from inference_worker.contracts.report import parse_listen\n"
        f"port = parse_listen(json.load(open({LISTEN_FILE!r}))).http_port\n"
        f"urllib.request.urlopen('http://{host}:%d/v2/health/ready' % port, timeout=2)\n"
    )


def _resources(spec: ServiceSpec) -> Resources:
    limit = settings.KILN_DOCKER_MEMORY_LIMIT
    reserve = settings.KILN_SWARM_RESERVE_MEMORY
    return Resources(
        cpu_limit=int(settings.KILN_DOCKER_CPUS * 1e9) or None,
        mem_limit=parse_bytes(limit) if limit else None,
        cpu_reservation=int(settings.KILN_SWARM_RESERVE_CPUS * 1e9) or None,
        mem_reservation=parse_bytes(reserve) if reserve else None,
        generic_resources={GPU_RESOURCE: len(spec.worker.gpu_ids)} if spec.worker.gpu_ids else None,
    )


def update_config() -> UpdateConfig:
    """Rolling updates start the new task first and roll back on a failure within the monitor window."""
    return UpdateConfig(
        parallelism=settings.KILN_SWARM_UPDATE_PARALLELISM,
        delay=int(settings.KILN_SWARM_UPDATE_DELAY_S * SECOND_NS),
        failure_action="rollback",
        monitor=int(settings.KILN_SWARM_UPDATE_MONITOR_S * SECOND_NS),
        max_failure_ratio=0,
        order="start-first",
    )


def rollback_config() -> RollbackConfig:
    return RollbackConfig(
        parallelism=settings.KILN_SWARM_UPDATE_PARALLELISM,
        failure_action="pause",
        monitor=int(settings.KILN_SWARM_UPDATE_MONITOR_S * SECOND_NS),
        order="start-first",
    )


def fingerprint(spec: ServiceSpec, template: dict[str, Any]) -> str:
    """A digest of everything sent for the tasks: when it changes, the running service is updated."""
    sent = {"template": template, "update": dict(update_config()), "rollback": dict(rollback_config())}
    text = json.dumps(sent, sort_keys=True, default=str)
    return hashlib.sha256(f"{spec.spec_hash}|{text}".encode()).hexdigest()[:32]
