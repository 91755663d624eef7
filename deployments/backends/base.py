"""The backend interface: start, stop, status, logs — and what they exchange."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import httpx

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


def probe_http_ready(http_url: str) -> bool:
    """The Open Inference Protocol's readiness probe, with a short timeout (never raises)."""
    if not http_url:
        return False
    try:
        return httpx.get(f"{http_url}/v2/health/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
