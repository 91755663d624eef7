"""Worker backends behind one interface, chosen per variant by name.

``process`` (local subprocesses, the embedded default) and ``docker``
(containers through the Docker engine at ``DOCKER_HOST``).
"""

from __future__ import annotations

from deployments.backends.base import Backend, BackendError, BackendStatus, WorkerHandle, WorkerSpec

_BACKENDS: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend named ``name`` (one instance per process)."""
    if name not in _BACKENDS:
        if name == "process":
            from deployments.backends.process import ProcessBackend

            _BACKENDS[name] = ProcessBackend()
        elif name == "docker":
            from deployments.backends.docker import DockerBackend

            _BACKENDS[name] = DockerBackend()
        else:
            raise BackendError(f"unknown backend {name!r}; use process or docker", code="unknown_backend")
    return _BACKENDS[name]


def uses_images(name: str) -> bool:
    """Whether workers of the backend ``name`` run from a built worker image (False for an unknown one)."""
    try:
        return get_backend(name).uses_images
    except BackendError:
        return False


__all__ = ("Backend", "BackendError", "BackendStatus", "WorkerHandle", "WorkerSpec", "get_backend")
