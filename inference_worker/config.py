"""Worker configuration: frozen dataclasses, one field per command-line flag.

Field names follow Triton's model configuration (``max_batch_size``,
``preferred_batch_sizes``, ``max_queue_delay_microseconds``...) while the flags
keep the units operators type (``--max-queue-delay-ms``); ``cli.main()`` does
the conversion. ``__post_init__`` rejects combinations that cannot work, with
a message that names the flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


class ConfigError(ValueError):
    """An option value the worker cannot start with; the message is one line."""


_DEVICE = re.compile(r"^(cpu|cuda:\d{1,2})$")


@dataclass(frozen=True)
class ModelConfig:
    """Which artifact to serve, and how ONNX Runtime runs it."""

    name: str
    path: Path
    version: str = "1"
    sha256: str | None = None
    device: str = "cpu"
    instance_count: int = 1
    intra_op_num_threads: int = 0
    """0 lets ONNX Runtime pick (one per physical core)."""
    allow_spinning: bool = False
    """Intra-op threads spin-wait between parallel sections: off, they leave the cores to the event loop."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", self.name):
            raise ConfigError(f"--model-name: {self.name!r} must be 1-128 letters, digits, '_', '.', '-'")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", self.version):
            raise ConfigError(
                f"--model-version: {self.version!r} must be 1-64 letters, digits, '_', '.', '-'"
            )
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ConfigError("--model-sha256: expected 64 lowercase hexadecimal digits")
        if not _DEVICE.match(self.device):
            raise ConfigError(f"--device: {self.device!r} is not 'cpu' or 'cuda:N'")
        if not 1 <= self.instance_count <= 64:
            raise ConfigError("--instances: must be between 1 and 64")
        if not 0 <= self.intra_op_num_threads <= 256:
            raise ConfigError("--intra-op-threads: must be between 0 and 256")


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher: when a queued request runs, and with whom."""

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    """0 is Triton's default: take whatever is queued, so an idle worker answers at once."""
    max_queue_size: int = 1024
    default_timeout_microseconds: int = 10_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 65536:
            raise ConfigError("--max-batch-size: must be between 1 and 65536")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ConfigError(
                    f"--preferred-batch-sizes: {size} is outside 1..--max-batch-size ({self.max_batch_size})"
                )
        if list(self.preferred_batch_sizes) != sorted(set(self.preferred_batch_sizes)):
            raise ConfigError("--preferred-batch-sizes: sizes must be distinct and increasing")
        if not 0 <= self.max_queue_delay_microseconds <= 10_000_000:
            raise ConfigError("--max-queue-delay-ms: must be between 0 and 10000")
        if not 1 <= self.max_queue_size <= 1_000_000:
            raise ConfigError("--max-queue-size: must be between 1 and 1000000")
        if not 1_000 <= self.default_timeout_microseconds <= 3_600_000_000:
            raise ConfigError("--request-timeout-ms: must be between 1 and 3600000")


@dataclass(frozen=True)
class Limits:
    """Bounds checked before the worker allocates anything for a request."""

    max_body_bytes: int = 64 * MIB
    max_header_bytes: int = 64 * 1024
    """HTTP request line and headers together; also gRPC metadata."""
    max_tensor_elements: int = 1 << 24
    max_tensor_rank: int = 8
    max_queue_bytes: int = 1024 * MIB
    """Bytes of input tensors waiting in the queue, all requests together."""
    max_grpc_message_bytes: int = 64 * MIB
    max_parameters: int = 64
    max_name_length: int = 256

    def __post_init__(self) -> None:
        if not 1024 <= self.max_body_bytes <= 4096 * MIB:
            raise ConfigError("--max-body-bytes: must be between 1 KiB and 4 GiB")
        if not 1024 <= self.max_grpc_message_bytes <= 2047 * MIB:
            raise ConfigError("--max-grpc-message-bytes: must be between 1 KiB and 2047 MiB")
        if not 1 <= self.max_tensor_elements <= 1 << 34:
            raise ConfigError("--max-tensor-elements: must be between 1 and 2**34")
        if not self.max_queue_bytes >= 1024:
            raise ConfigError("--max-queue-bytes: must be at least 1 KiB")


@dataclass(frozen=True)
class ServerConfig:
    """Where the worker listens."""

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    """-1 turns the gRPC server off."""
    drain_timeout_s: float = 30.0
    shutdown_delay_s: float = 0.0
    """After SIGTERM, keep serving this long (not ready, reporting ``draining``) before the drain:
    time for an orchestrator that stops workers on its own (Swarm) to let the platform unroute it."""
    listen_file: str = ""
    """Once listening, write the address and the ports actually bound here (JSON), for a health
    check that cannot know a port chosen at start (port 0)."""

    def __post_init__(self) -> None:
        if not 0 <= self.http_port <= 65535:
            raise ConfigError("--http-port: must be between 0 and 65535")
        if not -1 <= self.grpc_port <= 65535:
            raise ConfigError("--grpc-port: must be between 0 and 65535 (or -1 for no gRPC)")
        if not 0 < self.drain_timeout_s <= 3600:
            raise ConfigError("--drain-timeout-s: must be between 0 and 3600")
        if not 0 <= self.shutdown_delay_s <= 600:
            raise ConfigError("--shutdown-delay-s: must be between 0 and 600")


@dataclass(frozen=True)
class ReportConfig:
    """Where and how often the worker pushes reports to the platform."""

    url: str | None = None
    token: str | None = field(default=None, repr=False)
    interval_s: float = 5.0
    worker_id: str = "worker"
    timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.url is not None and not re.match(r"^https?://[^\s/]+", self.url):
            raise ConfigError("--report-url: expected an http:// or https:// URL")
        if self.url is not None and not self.token:
            raise ConfigError("--report-token: required with --report-url")
        if not 0.05 <= self.interval_s <= 3600:
            raise ConfigError("--report-interval-s: must be between 0.05 and 3600")
        if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,128}", self.worker_id):
            raise ConfigError("--worker-id: must be 1-128 letters, digits, '_', '.', ':', '-'")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``serve`` needs."""

    model: ModelConfig
    batching: DynamicBatching = DynamicBatching()
    limits: Limits = Limits()
    server: ServerConfig = ServerConfig()
    report: ReportConfig = ReportConfig()
