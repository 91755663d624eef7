"""Worker backends that keep their workers in memory: the reconcile loop's table tests run on them.

``MemoryBackend`` implements the per-worker protocol (``deployments.backends.base.Backend``) for
real — start, status, readiness, stop, logs, managed handles — and lets a test act as the world: a
worker becomes ready, crashes with a log line, or hangs. ``MemoryServiceBackend`` implements the
service protocol (``ServiceBackend``, as swarm does) and lets the test act as the orchestrator.
Nothing is spawned, so a scenario of many reconcile passes runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from deployments import backends
from deployments.backends import BackendError, BackendStatus, ServiceSpec, WorkerHandle, WorkerSpec
from deployments.backends.base import Replica, ServiceStatus


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


@dataclass
class MemoryTask:
    """One task of a memory service, as an orchestrator would hold it."""

    handle: str
    slot: int
    spec_hash: str
    version: int
    node: str = ""
    state: str = "running"  # pending | running | shutdown | failed
    desired: str = "running"  # running | shutdown
    error: str = ""
    ready: bool = False
    created_at: float = field(default_factory=time.time)
    log: list[str] = field(default_factory=list)

    def as_replica(self) -> Replica:
        ended = self.state in ("shutdown", "failed")
        return Replica(
            handle=self.handle,
            slot=self.slot,
            spec_hash=self.spec_hash,
            version=self.version,
            node=self.node,
            address="10.0.0.1" if self.node == "node-a" else "10.0.0.2" if self.node else "",
            running=self.state == "running",
            stopping=self.desired == "shutdown" and not ended,
            ended=ended,
            died=self.state == "failed",
            error=self.error,
            created_at=self.created_at,
        )


@dataclass
class MemoryService:
    """A memory service: the spec last applied, its token, its tasks (history included)."""

    spec: ServiceSpec
    replicas: int
    token: str
    previous: ServiceSpec | None = None
    update_state: str = ""
    update_message: str = ""
    rolled_back_from: str = ""  # the note
    tasks: list[MemoryTask] = field(default_factory=list)


class MemoryServiceBackend:
    """The service-backend protocol on a dict; the test plays the orchestrator (``schedule``, ``crash``...).

    Applying a spec only records it, as a manager does; ``schedule`` then does what Swarm would:
    one task per missing slot (spread over two nodes, or pending when ``no_node`` says why), a new
    configuration started first with the old task stopped once the new one runs, surplus slots stopped.
    """

    name = "memory-swarm"
    uses_images = False
    owns_placement = True

    def __init__(self) -> None:
        self.services: dict[int, MemoryService] = {}
        self.applied = 0
        self.no_node: str | None = None  # a reason: new tasks stay pending with it
        self._ids = itertools.count(1)

    # -- the protocol --------------------------------------------------------------------
    def check_spec(self, *, gpu_ids: tuple[int, ...]) -> None:
        if gpu_ids:
            raise BackendError("the memory swarm has no GPU", code="no_gpu")

    def apply_service(self, spec: ServiceSpec) -> bool:
        service = self.services.get(spec.variant_id)
        if service is None:
            self.services[spec.variant_id] = MemoryService(
                spec=spec, replicas=spec.replicas, token=f"tok-{spec.variant_id}"
            )
        elif (service.spec, service.replicas) == (spec, spec.replicas):
            return False
        else:
            if service.spec.spec_hash != spec.spec_hash:
                service.previous = service.spec
                service.update_state, service.rolled_back_from = "updating", ""
            service.spec, service.replicas = spec, spec.replicas
        self.applied += 1
        return True

    def scale_service(self, variant_id: int, replicas: int) -> bool:
        service = self.services.get(variant_id)
        if service is None or service.replicas == replicas:
            return False
        service.replicas = replicas
        return True

    def service_status(self, variant_id: int) -> ServiceStatus:
        service = self.services.get(variant_id)
        if service is None:
            return ServiceStatus(exists=False)
        return ServiceStatus(
            exists=True,
            replicas=service.replicas,
            spec_hash=service.spec.spec_hash,
            token_digest=hashlib.sha256(service.token.encode()).hexdigest(),
            tasks=tuple(task.as_replica() for task in service.tasks),
            update_state=service.update_state,
            update_message=service.update_message,
            rolled_back_from=service.rolled_back_from,
        )

    def note_rollback(self, variant_id: int, spec_hash: str) -> None:
        self.services[variant_id].rolled_back_from = spec_hash

    def remove_service(self, variant_id: int) -> None:
        self.services.pop(variant_id, None)

    def probe_ready(self, handle: str, *, http_url: str) -> bool:
        task = self.task(handle)
        return task.ready and task.state == "running" and bool(http_url)

    def logs(self, handle: str, *, log_path: str, tail: int) -> str:
        return "\n".join(self.task(handle).log[-tail:])

    def managed_services(self, *, min_age_s: float) -> list[int]:
        return sorted(self.services)

    # -- the orchestrator ----------------------------------------------------------------
    def task(self, handle: str) -> MemoryTask:
        return next(t for s in self.services.values() for t in s.tasks if t.handle == handle)

    def live(self, variant_id: int | None = None) -> list[MemoryTask]:
        services = [self.services[variant_id]] if variant_id is not None else list(self.services.values())
        return [t for s in services for t in s.tasks if t.state in ("pending", "running")]

    def schedule(self) -> None:
        """One round of orchestration over every service."""
        for service in self.services.values():
            spec = service.spec
            for slot in range(1, service.replicas + 1):
                mine = [t for t in service.tasks if t.slot == slot and t.state in ("pending", "running")]
                current = [t for t in mine if t.spec_hash == spec.spec_hash and t.desired == "running"]
                if not current:
                    service.tasks.append(self._new_task(spec, slot))
                elif current[0].state == "running" and current[0].ready:
                    for old in mine:
                        if old.spec_hash != spec.spec_hash:
                            old.desired = "shutdown"  # start-first: the old one goes once the new one runs
            for task in service.tasks:
                if task.slot > service.replicas and task.state in ("pending", "running"):
                    task.desired = "shutdown"
                    if task.state == "pending":
                        task.state = "shutdown"

    def _new_task(self, spec: ServiceSpec, slot: int) -> MemoryTask:
        number = next(self._ids)
        if self.no_node:
            return MemoryTask(
                f"task{number}",
                slot,
                spec.spec_hash,
                int(spec.worker.launch.model_version),
                state="pending",
                error=self.no_node,
            )
        node = "node-a" if number % 2 else "node-b"
        return MemoryTask(
            f"task{number}",
            slot,
            spec.spec_hash,
            int(spec.worker.launch.model_version),
            node=node,
            log=["up"],
        )

    def finish_stops(self) -> None:
        """Every task told to stop has stopped."""
        for service in self.services.values():
            for task in service.tasks:
                if task.desired == "shutdown" and task.state == "running":
                    task.state = "shutdown"

    def crash(self, handle: str, *, error: str = "task: non-zero exit (1)", line: str = "") -> None:
        task = self.task(handle)
        task.state, task.error, task.desired = "failed", error, "shutdown"
        if line:
            task.log.append(line)

    def roll_back(self, variant_id: int, message: str) -> None:
        """The update failed: the service runs its previous configuration again, as Swarm does it
        (the whole earlier service comes back: nothing on it says which configuration failed)."""
        service = self.services[variant_id]
        assert service.previous is not None
        failed = service.spec.spec_hash
        service.update_state, service.update_message = "rollback_completed", message
        service.spec, service.previous = service.previous, None
        for task in service.tasks:
            if task.spec_hash == failed and task.state in ("pending", "running"):
                task.state, task.desired = "shutdown", "shutdown"


@contextmanager
def memory_service_backend() -> Iterator[MemoryServiceBackend]:
    """Install a fresh memory service backend as ``memory-swarm`` for the duration."""
    backend = MemoryServiceBackend()
    backends._BACKENDS["memory-swarm"] = backend
    try:
        yield backend
    finally:
        backends._BACKENDS.pop("memory-swarm", None)
