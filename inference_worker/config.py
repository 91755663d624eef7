"""Worker configuration: frozen dataclasses, one field per command-line flag.

Field names follow Triton's model configuration (``max_batch_size``,
``preferred_batch_sizes``, ``max_queue_delay_microseconds``...) while the flags
keep the units operators type (``--max-queue-delay-ms``). Defaults and
numeric bounds come from the option table (``contracts.worker_options``, the
batching options from ``contracts.batching``: the platform checks the same
ones); ``__post_init__`` refuses what cannot work, with a message that names
the flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from inference_worker.contracts import worker_options as options
from inference_worker.contracts.batching import (
    INSTANCES,
    INTRA_OP_THREADS,
    MAX_BATCH_SIZE,
    MAX_QUEUE_DELAY_MS,
    MAX_QUEUE_SIZE,
    REQUEST_TIMEOUT_MS,
    BatchingConfig,
)
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.labels import ClassLabels
from inference_worker.contracts.options import OptionField
from inference_worker.contracts.warmup import WarmupInputs

MIB = options.MIB
T = TypeVar("T")


class ConfigError(ValueError):
    """An option value the worker cannot start with; the message is one line."""


def refused(exc: ContractError) -> ConfigError:
    """A value the option table refuses, worded with its flag (``--max-batch-size: must be ...``)."""
    return ConfigError(f"--{exc.field.replace('_', '-')}: {exc.reason}")


def _checked(option: OptionField[T], value: object) -> T:
    try:
        return option.check(value)
    except ContractError as exc:
        raise refused(exc) from None


_DEVICE = re.compile(r"^(cpu|cuda:\d{1,2})$")


@dataclass(frozen=True)
class ModelConfig:
    """Which artifact to serve, and how ONNX Runtime runs it."""

    name: str
    path: Path
    version: str = options.MODEL_VERSION.default
    sha256: str | None = None
    device: str = options.DEVICE.default
    instance_count: int = INSTANCES.default
    intra_op_num_threads: int = INTRA_OP_THREADS.default
    """0 lets ONNX Runtime pick (one per physical core)."""
    allow_spinning: bool = options.INTRA_OP_SPINNING.default
    """Intra-op threads spin-wait between parallel sections: off, they leave the cores to the event loop."""
    inline_below_us: int = options.INLINE_BELOW_US.default
    """Batches run on the event loop's thread when batches as large took at most this (``runner``)."""
    warmup: WarmupInputs | None = None
    """The inputs the conversion validated (``--warmup-inputs``); None: zeros, dynamic dims 1."""
    class_labels: ClassLabels = field(default_factory=ClassLabels)
    """The outputs' class labels (``--class-labels``), appended to classification answers."""

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
        _checked(INSTANCES, self.instance_count)
        _checked(INTRA_OP_THREADS, self.intra_op_num_threads)
        _checked(options.INLINE_BELOW_US, self.inline_below_us)


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher: when a queued request runs, and with whom."""

    max_batch_size: int = MAX_BATCH_SIZE.default
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = round(MAX_QUEUE_DELAY_MS.default * 1000)
    """0 is Triton's default: take whatever is queued, so an idle worker answers at once."""
    max_queue_size: int = MAX_QUEUE_SIZE.default
    default_timeout_microseconds: int = round(REQUEST_TIMEOUT_MS.default * 1000)

    def __post_init__(self) -> None:
        self.options()

    @classmethod
    def from_options(cls, batching: BatchingConfig) -> DynamicBatching:
        """The batcher's view of the options the platform (or the command line) gave."""
        return cls(
            max_batch_size=batching.max_batch_size,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            max_queue_delay_microseconds=round(batching.max_queue_delay_ms * 1000),
            max_queue_size=batching.max_queue_size,
            default_timeout_microseconds=round(batching.request_timeout_ms * 1000),
        )

    def options(self, instances: int = INSTANCES.default) -> BatchingConfig:
        """The same options in the table's units; the table's bounds refuse what they must."""
        try:
            return BatchingConfig(
                max_batch_size=self.max_batch_size,
                max_queue_delay_ms=self.max_queue_delay_microseconds / 1000,
                preferred_batch_sizes=self.preferred_batch_sizes,
                max_queue_size=self.max_queue_size,
                request_timeout_ms=self.default_timeout_microseconds / 1000,
                instances=instances,
            )
        except ContractError as exc:
            raise refused(exc) from None


@dataclass(frozen=True)
class Limits:
    """Bounds checked before the worker allocates anything for a request."""

    max_body_bytes: int = options.MAX_BODY_BYTES.default
    max_header_bytes: int = 64 * 1024
    """HTTP request line and headers together; also gRPC metadata."""
    max_tensor_elements: int = options.MAX_TENSOR_ELEMENTS.default
    max_tensor_rank: int = 8
    max_queue_bytes: int = options.MAX_QUEUE_BYTES.default
    """Bytes of input tensors waiting in the queue, all requests together."""
    max_grpc_message_bytes: int = options.MAX_GRPC_MESSAGE_BYTES.default
    max_parameters: int = 64
    max_name_length: int = 256

    def __post_init__(self) -> None:
        _checked(options.MAX_BODY_BYTES, self.max_body_bytes)
        _checked(options.MAX_GRPC_MESSAGE_BYTES, self.max_grpc_message_bytes)
        _checked(options.MAX_TENSOR_ELEMENTS, self.max_tensor_elements)
        _checked(options.MAX_QUEUE_BYTES, self.max_queue_bytes)


@dataclass(frozen=True)
class SharedMemoryConfig:
    """The system shared memory extension: on or off, and how much a worker's clients may register."""

    enabled: bool = options.SYSTEM_SHARED_MEMORY.default
    max_regions: int = options.MAX_SHM_REGIONS.default
    max_bytes: int = options.MAX_SHM_BYTES.default

    def __post_init__(self) -> None:
        _checked(options.SYSTEM_SHARED_MEMORY, self.enabled)
        _checked(options.MAX_SHM_REGIONS, self.max_regions)
        _checked(options.MAX_SHM_BYTES, self.max_bytes)


@dataclass(frozen=True)
class ServerConfig:
    """Where the worker listens."""

    host: str = options.HOST.default
    http_port: int = options.HTTP_PORT.default
    grpc_port: int = options.GRPC_PORT.default
    """-1 turns the gRPC server off."""
    drain_timeout_s: float = options.DRAIN_TIMEOUT_S.default
    shutdown_delay_s: float = options.SHUTDOWN_DELAY_S.default
    """After SIGTERM, keep serving this long (not ready, reporting ``draining``) before the drain:
    time for an orchestrator that stops workers on its own (Swarm) to let the platform unroute it."""
    listen_file: str = options.LISTEN_FILE.default
    """Once listening, write the address and the ports actually bound here (JSON), for a health
    check that cannot know a port chosen at start (port 0)."""

    def __post_init__(self) -> None:
        _checked(options.HTTP_PORT, self.http_port)
        _checked(options.GRPC_PORT, self.grpc_port)
        _checked(options.DRAIN_TIMEOUT_S, self.drain_timeout_s)
        _checked(options.SHUTDOWN_DELAY_S, self.shutdown_delay_s)


@dataclass(frozen=True)
class ReportConfig:
    """Where and how often the worker pushes reports to the platform."""

    url: str | None = None
    token: str | None = field(default=None, repr=False)
    interval_s: float = options.REPORT_INTERVAL_S.default
    worker_id: str = "worker"
    timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.url is not None and not re.match(r"^https?://[^\s/]+", self.url):
            raise ConfigError("--report-url: expected an http:// or https:// URL")
        if self.url is not None and not self.token:
            raise ConfigError("--report-token: required with --report-url")
        _checked(options.REPORT_INTERVAL_S, self.interval_s)
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
    shared_memory: SharedMemoryConfig = SharedMemoryConfig()
