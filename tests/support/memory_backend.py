"""A worker backend that keeps its workers in memory: the reconcile loop's table tests run on it.

It implements the backend protocol (``deployments.backends.base.Backend``) for real — start,
status, readiness, stop, logs, managed handles — and lets a test act as the world: a worker
becomes ready, crashes with a log line, or hangs. Nothing is spawned, so a scenario of many
reconcile passes runs in milliseconds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from deployments import backends
from deployments.backends import BackendError, BackendStatus, WorkerHandle, WorkerSpec


@dataclass
class MemoryWorker:
    """One worker as the memory backend sees it."""

    spec: WorkerSpec
    started: float
    running: bool = True
    ready: bool = False
    exit_code: int | None = None
    log: list[str] = field(default_factory=list)
    stopped_with_grace_s: float | None = None


class MemoryBackend:
    """The backend protocol on a dict; the test drives what happens to the workers."""

    name = "memory"
    uses_images = False

    def __init__(self) -> None:
        self.workers: dict[str, MemoryWorker] = {}
        self.ready_on_start = False
        self.refuse_starts: str | None = None  # a message: every start fails with it
        self._ids = itertools.count(1)

    # -- the protocol --------------------------------------------------------------------
    def check_spec(self, *, gpu_ids: tuple[int, ...]) -> None:
        if gpu_ids:
            raise BackendError("the memory backend has no GPU", code="no_gpu")

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        if self.refuse_starts:
            raise BackendError(self.refuse_starts, code="start_failed")
        number = next(self._ids)
        handle = f"mem-{number}"
        self.workers[handle] = MemoryWorker(
            spec=spec,
            started=time.monotonic(),
            ready=self.ready_on_start,
            log=[f"worker {spec.worker_id} up"],
        )
        # An address a gateway could route to (nothing listens: .invalid never resolves).
        url = f"http://mem-{number}.invalid:8080"
        return WorkerHandle(handle=handle, http_url=url, grpc_target=f"mem-{number}.invalid:8081")

    def status(self, handle: str) -> BackendStatus:
        worker = self.workers.get(handle)
        if worker is None:
            return BackendStatus(running=False, detail="no such worker")
        if worker.running:
            return BackendStatus(running=True)
        return BackendStatus(
            running=False, exit_code=worker.exit_code, detail=f"exited with {worker.exit_code}"
        )

    def probe_ready(self, handle: str, *, http_url: str) -> bool:
        worker = self.workers.get(handle)
        return bool(worker and worker.running and worker.ready)

    def stop(self, handle: str, *, grace_s: float) -> None:
        worker = self.workers.get(handle)
        if worker is not None and worker.running:
            worker.running, worker.exit_code, worker.stopped_with_grace_s = False, 0, grace_s

    def logs(self, handle: str, *, log_path: str, tail: int) -> str:
        worker = self.workers.get(handle)
        return "\n".join(worker.log[-tail:]) if worker else ""

    def managed_handles(self, *, min_age_s: float) -> list[str]:
        now = time.monotonic()
        return [h for h, w in self.workers.items() if w.running and now - w.started >= min_age_s]

    # -- the world -----------------------------------------------------------------------
    def running(self) -> list[str]:
        return [h for h, w in self.workers.items() if w.running]

    def make_ready(self, *handles: str) -> None:
        for handle in handles or self.running():
            self.workers[handle].ready = True

    def crash(self, handle: str, *, exit_code: int = 1, line: str = "") -> None:
        worker = self.workers[handle]
        worker.running, worker.exit_code = False, exit_code
        if line:
            worker.log.append(line)

    def orphan(self) -> str:
        """A worker this backend runs that no platform row knows (left over from a crash)."""
        handle = f"mem-orphan-{next(self._ids)}"
        self.workers[handle] = MemoryWorker(spec=None, started=time.monotonic() - 3600, ready=True)  # type: ignore[arg-type]
        return handle


@contextmanager
def memory_backend() -> Iterator[MemoryBackend]:
    """Install a fresh memory backend as ``memory`` for the duration (``get_backend`` finds it)."""
    backend = MemoryBackend()
    backends._BACKENDS["memory"] = backend  # the process-wide table of backend instances
    try:
        yield backend
    finally:
        backends._BACKENDS.pop("memory", None)
