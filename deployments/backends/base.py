"""The backend interfaces — and what they exchange.

Two kinds of backend run workers. One the reconcile loop drives worker by worker
(``Backend``: start, status, stop; ``process``, ``docker``). The other owns placement
(``ServiceBackend``: ``swarm``): the loop writes one service per variant (a launch spec
every replica shares, a replica count, placement) and reads back its tasks; the
orchestrator starts, replaces, moves and rolls them, and the loop mirrors each task in a
worker row. ``owns_placement`` tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import httpx
from typing_extensions import TypeIs

from config.errors import PlatformError
from inference_worker.contracts.launch import LaunchSpec


class BackendError(PlatformError):
    """The backend could not do what was asked (engine down, no GPU, bad image...)."""

    default_code = "backend_error"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a backend needs to start one worker replica."""

    worker_id: int
    deployment: str
    variant: str
    onnx_path: Path
    gpu_ids: tuple[int, ...]
    launch: LaunchSpec
    """The worker's command line (``contracts.launch``); ``placed`` fills in where it runs."""
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def placed(
        self, *, host: str, http_port: int, grpc_port: int, model_path: str, report_url: str = ""
    ) -> LaunchSpec:
        """The launch spec as the worker sees it: its address, ports and model file, and its GPU.

        A backend makes only the granted GPUs visible to the worker, which numbers them
        from 0, so a GPU worker always runs on ``cuda:0``.
        """
        return replace(
            self.launch,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            model_path=model_path,
            device="cuda:0" if self.gpu_ids else "cpu",
            report_url=report_url or self.launch.report_url,
        )


@dataclass(frozen=True)
class WorkerHandle:
    """Where a started worker lives and how to find it again."""

    handle: str
    http_url: str
    grpc_target: str
    log_path: str = ""


@dataclass(frozen=True)
class BackendStatus:
    """What the backend sees of a worker: running or not, and why not."""

    running: bool
    exit_code: int | None = None
    detail: str = ""


class Backend(Protocol):
    """What every backend implements. Calls are synchronous and idempotent."""

    name: str
    uses_images: bool  # whether workers run from a built worker image (the reconcile loop waits for it)

    def check_spec(self, *, gpu_ids: tuple[int, ...]) -> None:
        """Refuse (``BackendError``) a variant this backend cannot run, e.g. GPUs where it has none."""
        ...

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Start one worker and return at once (readiness is probed separately)."""
        ...

    def stop(self, handle: str, *, grace_s: float) -> None:
        """SIGTERM (drain), then kill after ``grace_s``; a missing worker is not an error."""
        ...

    def status(self, handle: str) -> BackendStatus:
        """Whether the worker still runs."""
        ...

    def probe_ready(self, handle: str, *, http_url: str) -> bool:
        """Whether a started worker serves yet (its model loaded and warmed up)."""
        ...

    def logs(self, handle: str, *, log_path: str, tail: int) -> str:
        """The last ``tail`` lines the worker printed."""
        ...

    def managed_handles(self, *, min_age_s: float) -> list[str]:
        """Handles of workers this backend runs for this platform, started over ``min_age_s`` ago."""
        ...


TASK_ID = "{task_id}"
"""In a service's launch spec, where each replica's own id goes (its report URL, its worker id)."""


@dataclass(frozen=True)
class ServiceSpec:
    """Everything a backend that owns placement needs to run one variant as a service."""

    variant_id: int
    replicas: int
    spec_hash: str
    """The variant's configuration (``reconcile.spec_hash``): a new one is a rolling update."""
    worker: WorkerSpec
    """The launch spec every replica shares: ``worker_id`` 0, ``TASK_ID`` in its report URL."""
    constraints: tuple[str, ...] = ()
    spread: tuple[str, ...] = ()


@dataclass(frozen=True)
class Replica:
    """One task of a service, as the orchestrator reports it."""

    handle: str
    slot: int
    spec_hash: str
    version: int
    node: str = ""
    """The machine it was placed on ("" while pending)."""
    address: str = ""
    """Where workers on that machine are reached (they listen on ports they report)."""
    running: bool = False
    """Its container runs and passed its health check."""
    stopping: bool = False
    """The orchestrator stops it on purpose: a rolling update, a scale-down, a drained node."""
    ended: bool = False
    died: bool = False
    """It ended on its own (it exited, failed its health check, its node was lost), unasked."""
    error: str = ""
    """Why it is pending, or how it ended."""
    created_at: float = 0.0
    """When the orchestrator created it (seconds since the epoch)."""


@dataclass(frozen=True)
class ServiceStatus:
    """A variant's service: what it is told to run, and its tasks (live ones, and recent ended ones)."""

    exists: bool
    replicas: int = 0
    spec_hash: str = ""
    token_digest: str = ""
    """The digest of the report token every replica of the service sends."""
    tasks: tuple[Replica, ...] = ()
    update_state: str = ""
    """The orchestrator's last update: ``updating``, ``completed``, ``rollback_started``,
    ``rollback_completed``, ``rollback_paused``... ("" before any)."""
    update_message: str = ""
    rolled_back_from: str = ""
    """The configuration of an update the orchestrator rolled back, as noted (``note_rollback``)."""

    @property
    def rolling_back(self) -> bool:
        return self.update_state == "rollback_started"

    @property
    def rolled_back(self) -> bool:
        return self.update_state in ("rollback_completed", "rollback_paused")


class ServiceBackend(Protocol):
    """A backend that owns placement: one service per variant, its tasks placed and replaced by it."""

    name: str
    uses_images: bool
    owns_placement: bool  # True

    def check_spec(self, *, gpu_ids: tuple[int, ...]) -> None:
        """Refuse (``BackendError``) a variant this backend cannot run."""
        ...

    def apply_service(self, spec: ServiceSpec) -> bool:
        """Create the variant's service or update it to ``spec``; whether anything changed.

        A new ``spec_hash`` rolls the tasks (new ones first); a new replica count only
        starts or stops tasks. Applying the same spec twice changes nothing.
        """
        ...

    def service_status(self, variant_id: int) -> ServiceStatus:
        """The variant's service and its tasks (``exists`` False when there is none)."""
        ...

    def scale_service(self, variant_id: int, replicas: int) -> bool:
        """Change only the replica count of an existing service; whether it changed (False: no service)."""
        ...

    def note_rollback(self, variant_id: int, spec_hash: str) -> None:
        """Record on the service that the update to ``spec_hash`` was rolled back.

        A rollback restores the whole earlier service, labels included, so the service no longer
        says what failed; this note stays until the next configuration is applied.
        """
        ...

    def remove_service(self, variant_id: int) -> None:
        """Remove the service (its tasks stop); a missing one is not an error."""
        ...

    def probe_ready(self, handle: str, *, http_url: str) -> bool:
        """Whether a task's worker serves yet."""
        ...

    def logs(self, handle: str, *, log_path: str, tail: int) -> str:
        """The last ``tail`` lines a task's worker printed."""
        ...

    def managed_services(self, *, min_age_s: float) -> list[int]:
        """The variant ids of services this platform runs, created over ``min_age_s`` ago."""
        ...


AnyBackend = Backend | ServiceBackend


def owns_placement(backend: AnyBackend) -> TypeIs[ServiceBackend]:
    """Whether ``backend`` runs services whose tasks an orchestrator places (else: worker by worker)."""
    return getattr(backend, "owns_placement", False) is True


def probe_http_ready(http_url: str) -> bool:
    """The Open Inference Protocol's readiness probe, with a short timeout (never raises)."""
    if not http_url:
        return False
    try:
        return httpx.get(f"{http_url}/v2/health/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
