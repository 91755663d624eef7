"""The Docker engine at ``DOCKER_HOST``: one client per process, the error when it does not answer,
and a hint in Redis for processes that cannot reach it.

The docker backend (containers) and the worker-image builder share this module. The web process
of the compose stack has no engine socket: it validates docker variants against what a Celery
worker recorded here (``remember_engine``) in the last two minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from typing import Any

import docker
import docker.constants
import docker.errors
import requests
from django.conf import settings

from config.redis import redis_client
from deployments.backends.base import BackendError

ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)
"""What a call to the engine raises when the engine, not the request, is the problem."""


_ENGINE_SEEN_TTL_S = 120


def _engine_seen_key() -> str:
    """Per platform instance and engine: a hint about one engine says nothing about another."""
    engine_id = hashlib.sha256(engine_url().encode()).hexdigest()[:16]
    return f"{settings.KILN_INSTANCE_ID}:docker:engine:{engine_id}"


def remember_engine(info: dict[str, Any]) -> None:
    """Record, for processes without the engine's socket, that it answers and which runtimes it has."""
    seen = {
        "Runtimes": sorted(info.get("Runtimes") or {}),
        "DefaultRuntime": info.get("DefaultRuntime") or "",
    }
    with contextlib.suppress(Exception):  # only a hint for other processes
        redis_client().set(_engine_seen_key(), json.dumps(seen), ex=_ENGINE_SEEN_TTL_S)


def engine_seen_by_workers() -> dict[str, Any] | None:
    """What ``remember_engine`` recorded in the last two minutes, or None."""
    try:
        raw = redis_client().get(_engine_seen_key())
    except Exception:  # Redis down: no hint
        return None
    if not raw:
        return None
    seen = json.loads(raw)
    return {
        "Runtimes": {key: {} for key in seen.get("Runtimes", [])},
        "DefaultRuntime": seen.get("DefaultRuntime"),
    }


def engine_url() -> str:
    """Where the engine listens: ``DOCKER_HOST``, else the local socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


_clients: dict[tuple[int, float], docker.DockerClient] = {}


def engine(*, timeout_s: float | None = None) -> docker.DockerClient:
    """A client of the engine at ``DOCKER_HOST`` (one per process and timeout; a fork gets its own)."""
    timeout = timeout_s or settings.KILN_DOCKER_ENGINE_TIMEOUT_S
    key = (os.getpid(), timeout)
    if key not in _clients:
        _check_unix_socket(engine_url())
        # Ask the engine its API version first with a client we can close: docker.from_env()'s own
        # probe leaves its connection open when the engine does not answer.
        probe = docker.from_env(timeout=int(timeout), version=docker.constants.MINIMUM_DOCKER_API_VERSION)
        try:
            version = str(probe.api.version(api_version=False)["ApiVersion"])
        except (*ENGINE_ERRORS, KeyError) as exc:
            raise unavailable(exc) from exc
        finally:
            probe.close()
        _clients[key] = docker.from_env(timeout=int(timeout), version=version)
    return _clients[key]


def _check_unix_socket(url: str) -> None:
    """Refuse a local socket nobody listens on (the SDK's own attempt leaks its socket when it fails)."""
    if not url.startswith("unix://"):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(url.removeprefix("unix://"))
        except OSError as exc:
            raise unavailable(exc) from exc


def unavailable(exc: BaseException) -> BackendError:
    """The error every caller shows when the engine does not answer, saying how to start one."""
    return BackendError(
        f"no Docker engine answers at {engine_url()} ({short_error(exc)}); start one "
        "(bash .ci/setup.d/docker.sh on this machine) or point DOCKER_HOST at a running engine",
        code="engine_unavailable",
    )


def short_error(exc: BaseException) -> str:
    """The first line of an engine error, bounded (the SDK's messages run long)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
