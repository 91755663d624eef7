"""The backend interface: start, stop, status, logs — and what they exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from config.errors import PlatformError


class BackendError(PlatformError):
    """The backend could not do what was asked (engine down, no GPU, bad image...)."""

    default_code = "backend_error"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a backend needs to start one worker replica."""

    worker_id: int
    deployment: str
    variant: str
    model_name: str
    model_version: int
    onnx_path: Path
    onnx_sha256: str
    gpu_ids: tuple[int, ...]
    max_batch_size: int
    max_queue_delay_ms: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    request_timeout_ms: float
    instances: int
    report_url: str
    report_token: str
    report_interval_s: float
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return f"cuda:{self.gpu_ids[0]}" if self.gpu_ids else "cpu"

    def worker_args(self, *, host: str, http_port: int, grpc_port: int, model_path: str) -> list[str]:
        """The ``inference-worker serve`` arguments (the token goes through the environment)."""
        args = [
            "serve",
            "--model-name",
            self.model_name,
            "--model-version",
            str(self.model_version),
            "--model-path",
            model_path,
            "--model-sha256",
            self.onnx_sha256,
            "--host",
            host,
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--device",
            self.device,
            "--instances",
            str(self.instances),
            "--max-batch-size",
            str(self.max_batch_size),
            "--max-queue-delay-ms",
            str(self.max_queue_delay_ms),
            "--max-queue-size",
            str(self.max_queue_size),
            "--request-timeout-ms",
            str(self.request_timeout_ms),
            "--report-url",
            self.report_url,
            "--report-interval-s",
            str(self.report_interval_s),
            "--worker-id",
            str(self.worker_id),
        ]
        if self.preferred_batch_sizes:
            args += ["--preferred-batch-sizes", ",".join(map(str, self.preferred_batch_sizes))]
        return args


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
