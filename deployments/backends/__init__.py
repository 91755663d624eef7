"""Worker backends behind one interface, chosen per variant by name.

``process`` (local subprocesses, the embedded default), ``docker`` (containers through the
Docker engine at ``DOCKER_HOST``) and ``swarm`` (one Docker Swarm service per variant through a
swarm manager at ``DOCKER_HOST``, its tasks placed by the swarm on any node).
"""

from __future__ import annotations

from deployments.backends.base import (
    AnyBackend,
    Backend,
    BackendError,
    BackendStatus,
    ServiceBackend,
    ServiceSpec,
    WorkerHandle,
    WorkerSpec,
    owns_placement,
)

BACKEND_NAMES = ("process", "docker", "swarm")
"""The backends a variant may name (forms, serializers and the admin offer these)."""

_BACKENDS: dict[str, AnyBackend] = {}


def get_backend(name: str) -> AnyBackend:
    """The backend named ``name`` (one instance per process)."""
    if name not in _BACKENDS:
        if name == "process":
            from deployments.backends.process import ProcessBackend

            _BACKENDS[name] = ProcessBackend()
        elif name == "docker":
            from deployments.backends.docker import DockerBackend

            _BACKENDS[name] = DockerBackend()
        elif name == "swarm":
            from deployments.backends.swarm import SwarmBackend

            _BACKENDS[name] = SwarmBackend()
        else:
            raise BackendError(
                f"unknown backend {name!r}; use {', '.join(BACKEND_NAMES[:-1])} or {BACKEND_NAMES[-1]}",
                code="unknown_backend",
            )
    return _BACKENDS[name]


def worker_backend(name: str) -> Backend:
    """The backend ``name``, which must start and stop workers one by one (not own placement)."""
    backend = get_backend(name)
    if owns_placement(backend):
        raise BackendError(f"the {name} backend runs services, not single workers", code="owns_placement")
    return backend


def uses_images(name: str) -> bool:
    """Whether workers of the backend ``name`` run from a built worker image (False for an unknown one)."""
    try:
        return get_backend(name).uses_images
    except BackendError:
        return False


__all__ = (
    "BACKEND_NAMES",
    "AnyBackend",
    "Backend",
    "BackendError",
    "BackendStatus",
    "ServiceBackend",
    "ServiceSpec",
    "WorkerHandle",
    "WorkerSpec",
    "get_backend",
    "owns_placement",
    "uses_images",
    "worker_backend",
)
