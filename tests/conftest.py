"""Shared fixtures: personas, API clients, a real Celery worker on the test database."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client
from rest_framework.test import APIClient

from accounts.tokens import create_api_token
from tests.support.services import (
    CeleryBeat,
    CeleryWorker,
    Gateway,
    Platform,
    database_url_for_children,
    stop_workers_of,
    wait_until_the_database_is_quiet,
)

# One private queue per test session: Celery builds its router once, so the name cannot change later.
TEST_QUEUE = f"kiln-test-{os.getpid()}"


@pytest.fixture(scope="session", autouse=True)
def _no_session_left_on_the_test_database(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """At the very end, end the sessions other processes and the live server's threads still hold,
    so the test database can be dropped."""
    yield
    from django.db import DatabaseError, connection

    try:
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    except DatabaseError:
        pass  # nothing to end: the database is gone or was never reached


@pytest.fixture(scope="session", autouse=True)
def _private_celery_queue() -> None:
    """Every task this session sends goes to queues only this session's workers consume."""
    from config.celery_app import app

    settings.CELERY_TASK_DEFAULT_QUEUE = TEST_QUEUE
    settings.KILN_CELERY_LONG_QUEUE = f"{TEST_QUEUE}.long"
    app.conf.task_default_queue = TEST_QUEUE
    app.conf.task_routes = {name: {"queue": f"{TEST_QUEUE}.long"} for name in settings.CELERY_TASK_ROUTES}


@pytest.fixture(autouse=True)
def _artifact_root(tmp_path_factory: pytest.TempPathFactory, settings: Any) -> None:
    """Each test stores artifacts in its own directory."""
    settings.KILN_ARTIFACT_ROOT = tmp_path_factory.mktemp("artifacts")


@pytest.fixture
def team() -> Group:
    return Group.objects.create(name="ml-team")


@pytest.fixture
def owner(db: None) -> User:
    return User.objects.create_user("olivia", "olivia@example.com", "pw-olivia-123")


@pytest.fixture
def teammate(team: Group) -> User:
    user = User.objects.create_user("tom", "tom@example.com", "pw-tom-123")
    user.groups.add(team)
    return user


@pytest.fixture
def outsider(db: None) -> User:
    return User.objects.create_user("oscar", "oscar@example.com", "pw-oscar-123")


@pytest.fixture
def staff(db: None) -> User:
    return User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")


def _api_client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_token(user=user)}")
    return client


@pytest.fixture
def api_as() -> Callable[[User], APIClient]:
    """An API client that authenticates with a real hashed token of ``user``."""
    return _api_client


@pytest.fixture
def owner_api(owner: User) -> APIClient:
    return _api_client(owner)


@pytest.fixture
def anonymous_api() -> APIClient:
    return APIClient()


@pytest.fixture
def web_as() -> Callable[[User], Client]:
    """A browser-like client logged in as ``user``, with CSRF checks on."""

    def make(user: User) -> Client:
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        return client

    return make


@pytest.fixture
def celery_worker(
    transactional_db: None, settings: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[CeleryWorker]:
    """A real Celery worker consuming this session's private queues; tests use transactional_db."""
    queue = TEST_QUEUE
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_children(),
        "KILN_CELERY_QUEUE": queue,
        "KILN_ARTIFACT_ROOT": str(settings.KILN_ARTIFACT_ROOT),
        "KILN_CONVERT_LEASE_S": str(settings.KILN_CONVERT_LEASE_S),
        "KILN_PROFILE_MAX_BATCH": str(settings.KILN_PROFILE_MAX_BATCH),
        "KILN_PARITY_ATOL": str(settings.KILN_PARITY_ATOL),
        "KILN_PARITY_RTOL": str(settings.KILN_PARITY_RTOL),
        "PYTHONUNBUFFERED": "1",
        **_advice_measure_env(),
    }
    worker = CeleryWorker(env, tmp_path / "celery.log")
    worker.start()
    yield worker
    worker.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        sys.stderr.write(f"\n--- celery worker log ---\n{worker.log_tail()}\n")


def _advice_measure_env() -> dict[str, str]:
    """The serving-advice measurement settings as the test set them, as the environment spells them."""
    env = {}
    for name in dir(settings):  # django.conf's: pytest-django's wrapper lists none
        if name.startswith("KILN_ADVICE_MEASURE_"):
            value = getattr(settings, name)
            if isinstance(value, list):
                env[name] = ",".join(map(str, value))
            else:
                env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kiln-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def platform(
    celery_worker: CeleryWorker, live_server: Any, settings: Any, tmp_path: Path
) -> Iterator[Platform]:
    """Web (live server), a Celery worker and beat with a fast reconcile loop and fast reports.

    Worker processes started for this test carry a private instance id, so clean-up never
    touches another run's workers; whatever this test started is stopped at the end.
    """
    instance = f"kiln-test-{os.getpid()}-{time.monotonic_ns()}"
    fast = {
        "KILN_PUBLIC_URL": live_server.url,
        "KILN_INSTANCE_ID": instance,
        "KILN_ROUTING_KEY": f"{instance}:routing",
        "KILN_RECONCILE_INTERVAL_S": "1",
        "KILN_REPORT_INTERVAL_S": "1",
        "KILN_WORKER_STALE_S": "6",
        "KILN_WORKER_REPLACE_AFTER_S": "4",
        "KILN_DRAIN_DELAY_S": "1",
        "KILN_CRASHLOOP_RESTARTS": "2",
        "KILN_VAR_DIR": str(tmp_path / "var"),
    }
    for key, value in fast.items():
        name = key
        current = getattr(settings, name, None)
        if isinstance(current, float):
            setattr(settings, name, float(value))
        elif isinstance(current, int) and not isinstance(current, bool):
            setattr(settings, name, int(value))
        elif name == "KILN_VAR_DIR":
            settings.VAR_DIR = Path(value)
        else:
            setattr(settings, name, value)
    gateway = Gateway({**celery_worker.env, **fast}, tmp_path / "gateway.log")
    settings.KILN_GATEWAY_URL = gateway.url
    settings.KILN_GATEWAY_GRPC_TARGET = gateway.grpc
    fast["KILN_GATEWAY_URL"] = gateway.url
    fast["KILN_GATEWAY_GRPC_TARGET"] = gateway.grpc
    celery_worker.stop()
    celery_worker.env.update(fast)
    celery_worker.start()
    beat = CeleryBeat(celery_worker.env, tmp_path / "beat.log")
    beat.start()
    gateway.start()
    yield Platform(live_server.url, celery_worker, beat, gateway)
    gateway.stop()
    beat.stop()
    celery_worker.stop()
    stop_workers_of(instance)
    wait_until_the_database_is_quiet()
