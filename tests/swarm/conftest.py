"""The swarm suite's fixtures: a two-node swarm and a registry for the session, a platform driving it.

The cluster (``tests.support.swarm_cluster``) comes up once per session (about 15 s) and goes with
it. Each test gets the usual platform (web, Celery worker and beat, gateway) with
``DOCKER_HOST`` at the swarm manager, the registry in ``KILN_DOCKER_IMAGE_REPOSITORY`` and short
timings, plus a second gateway reading the same routing table; whatever the test left (services,
their secrets) is removed after it.

The suite has a budget of its own (``KILN_SWARM_SUITE_BUDGET_S``, 8 minutes from the cluster's
start, CI's share for it) besides each test's timeout: a test that would start past it fails.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from django.conf import settings as django_settings

from tests.support.services import CeleryWorker, Gateway, Platform
from tests.support.swarm_cluster import SwarmCluster, missing_prerequisites

BASE_IMAGE = os.environ.get("KILN_DOCKER_BASE_IMAGE", "kiln/python-base:bookworm")
BUDGET_S = float(os.environ.get("KILN_SWARM_SUITE_BUDGET_S", "480"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[SwarmCluster]:
    why = missing_prerequisites(BASE_IMAGE)
    if why:
        pytest.skip(why)
    swarm = SwarmCluster()
    try:
        swarm.start(base_image=BASE_IMAGE)
    except (RuntimeError, docker.errors.DockerException) as exc:
        logs = f"{swarm.first.log_tail()}\n{swarm.second.log_tail()}"
        swarm.stop()
        pytest.fail(f"the test swarm did not come up: {exc}\n{logs}")
    yield swarm
    swarm.stop()


@pytest.fixture(autouse=True)
def _within_the_suites_budget(cluster: SwarmCluster) -> None:
    spent = time.monotonic() - cluster.started
    if spent > BUDGET_S:
        pytest.fail(f"the swarm suite has spent {spent:.0f} s, past its budget of {BUDGET_S:.0f} s")


@pytest.fixture
def swarm_settings(
    cluster: SwarmCluster,
    celery_worker: CeleryWorker,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The platform drives the swarm: this process (the web app) and the Celery worker alike."""
    from deployments import backends
    from deployments.backends import docker_engine

    values = {
        "DOCKER_HOST": cluster.first.url,
        "KILN_DEFAULT_BACKEND": "swarm",
        "KILN_DOCKER_BASE_IMAGE": BASE_IMAGE,
        "KILN_DOCKER_IMAGE_REPOSITORY": f"{cluster.registry}/kiln-test-worker",
        "KILN_DOCKER_MEMORY_LIMIT": "1g",
        "KILN_WHEELHOUSE_DIR": str(django_settings.KILN_WHEELHOUSE_DIR),
        "KILN_SWARM_BIND_HOST": "127.0.0.1",
        "KILN_SWARM_SHUTDOWN_DELAY_S": "4",
        "KILN_SWARM_HEALTH_INTERVAL_S": "1",
        "KILN_SWARM_RESTART_DELAY_S": "1",
        "KILN_SWARM_UPDATE_MONITOR_S": "3",
        "KILN_DRAIN_GRACE_S": "10",
    }
    monkeypatch.setenv("DOCKER_HOST", cluster.first.url)
    monkeypatch.setattr(docker_engine, "_clients", {})
    monkeypatch.setattr(backends, "_BACKENDS", {})
    for key, value in values.items():
        if key != "DOCKER_HOST":
            current = getattr(settings, key)
            setattr(settings, key, type(current)(value) if not isinstance(current, Path) else Path(value))
    celery_worker.env.update(values)
    return values


@pytest.fixture
def swarm_platform(
    swarm_settings: dict[str, str], platform: Platform, cluster: SwarmCluster
) -> Iterator[Platform]:
    """The platform on the swarm; its services and secrets go before the platform does (a failed test
    leaves tasks that would report to a web app without a database)."""
    yield platform
    label = f"kiln.instance={platform.worker.env['KILN_INSTANCE_ID']}"
    for service in cluster.manager.services.list(filters={"label": label}):
        service.remove()
    deadline = time.monotonic() + 30
    while cluster.containers(label) and time.monotonic() < deadline:
        time.sleep(0.5)  # their last reports reach the web app before its database goes
    for secret in cluster.manager.secrets.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            secret.remove()


@pytest.fixture
def second_gateway(swarm_platform: Platform, tmp_path: Path) -> Iterator[Gateway]:
    """Another gateway replica: stateless, it serves the same routing table from Redis."""
    gateway = Gateway(swarm_platform.gateway.env, tmp_path / "gateway-2.log")
    gateway.start()
    yield gateway
    gateway.stop()
