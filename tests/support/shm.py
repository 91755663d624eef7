"""Shared memory objects for the system shared memory tests: stock tritonclient regions, raw objects."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import itertools
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from inference_worker.config import SharedMemoryConfig, WorkerConfig
from tests.support.workers import RunningWorker

DEV_SHM = Path("/dev/shm")
_COUNTER = itertools.count()


def _stock_client_shm() -> ModuleType:
    """``tritonclient.utils.shared_memory``, unchanged (its libcshm creates and maps the regions).

    It imports ``pkg_resources`` for one call, ``resource_filename`` (where libcshm.so lies), and
    setuptools 81 and later no longer ship ``pkg_resources``: without it, that one function is
    given from ``importlib.resources``; with it, its deprecation warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if importlib.util.find_spec("pkg_resources") is None:
            shim = ModuleType("pkg_resources")
            shim.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)  # type: ignore[attr-defined]
            sys.modules["pkg_resources"] = shim
        return importlib.import_module("tritonclient.utils.shared_memory")


client_shm = _stock_client_shm()


def unique_key(label: str) -> str:
    """A POSIX shared memory name no other test (nor another run at the same time) uses."""
    return f"/kiln-test-{os.getpid()}-{next(_COUNTER)}-{label}"


def with_shared_memory(config: WorkerConfig, **limits: int) -> WorkerConfig:
    """``config`` with the extension on (and ``max_regions`` / ``max_bytes`` when given)."""
    return replace(config, shared_memory=SharedMemoryConfig(enabled=True, **limits))


@contextmanager
def shm_client(worker: RunningWorker, protocol: str = "http") -> Iterator[Any]:
    """Stock tritonclient (``http`` or ``grpc``) for ``worker``; its regions unregistered after."""
    if protocol == "grpc":
        import tritonclient.grpc as grpc_client

        client: Any = grpc_client.InferenceServerClient(worker.grpc_target)
    else:
        import tritonclient.http as http_client

        client = http_client.InferenceServerClient(worker.url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.unregister_system_shared_memory()


@contextmanager
def client_region(label: str, byte_size: int) -> Iterator[tuple[str, Any]]:
    """A region tritonclient creates (``shm_open``, ``ftruncate``, ``mmap``): (key, handle); then unlinked."""
    key = unique_key(label)
    handle = client_shm.create_shared_memory_region(label, key, byte_size)
    try:
        yield key, handle
    finally:
        client_shm.destroy_shared_memory_region(handle)


@contextmanager
def raw_object(label: str, content: bytes) -> Iterator[tuple[str, Path]]:
    """A plain shared memory object holding ``content``: (key, its path under /dev/shm); removed after."""
    key = unique_key(label)
    path = DEV_SHM / key.lstrip("/")
    path.write_bytes(content)
    os.chmod(path, 0o600)
    try:
        yield key, path
    finally:
        path.unlink(missing_ok=True)


def open_descriptors_of(key: str) -> list[str]:
    """This process's descriptors open on the object ``key`` (the test workers run in this process)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.split(" (deleted)")[0] == str(DEV_SHM / key.lstrip("/")):
            found.append(target)
    return found
