"""Batching options: the table of fields, and ``BatchingConfig``, the value both planes pass around.

The bounds are what the platform accepts and what the worker accepts: one
table, so the platform can never send a value the worker refuses (they used
to disagree: 4096 against 65536 rows, 1 s against 10 s of delay). The units
are the ones people type (milliseconds); the worker's batcher converts to
Triton's microseconds itself.

JSON form (the API's ``batching`` object, a variant's stored options)::

    {"max_batch_size": 32, "max_queue_delay_ms": 2.5, "preferred_batch_sizes": [8, 16],
     "max_queue_size": 1024, "request_timeout_ms": 10000.0, "instances": 1, "intra_op_threads": 0}

``parse_batching`` fills absent keys from a base (the defaults without one)
and reads the preferred sizes as a set (order and repeats don't matter);
building ``BatchingConfig`` directly is strict: sizes distinct and increasing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.options import Kind, OptionField, OptionTable

MAX_BATCH_SIZE = OptionField(
    "max_batch_size", Kind.INT, 32, "largest batch the batcher forms (a request with more rows gets 400)",
    unit="rows", low=1, high=4096,
)  # fmt: skip
MAX_QUEUE_DELAY_MS = OptionField(
    "max_queue_delay_ms", Kind.FLOAT, 0.0, "longest a request waits for its batch to fill (0: no wait)",
    unit="ms", low=0, high=1000, label="Max queue delay",
)  # fmt: skip
PREFERRED_BATCH_SIZES: OptionField[tuple[int, ...]] = OptionField(
    "preferred_batch_sizes", Kind.SIZES, (), "batch sizes sent as soon as reached (e.g. 8,16)",
    unit="rows", low=1,
)  # fmt: skip
MAX_QUEUE_SIZE = OptionField(
    "max_queue_size", Kind.INT, 1024, "queued requests beyond which a new one gets 503 at once",
    unit="requests", low=1, high=100_000,
)  # fmt: skip
REQUEST_TIMEOUT_MS = OptionField(
    "request_timeout_ms", Kind.FLOAT, 10_000.0, "a request still queued after this gets 504 and never runs",
    unit="ms", low=1, high=600_000, label="Request timeout",
)  # fmt: skip
INSTANCES = OptionField(
    "instances", Kind.INT, 1, "model sessions running batches at once, each on its own thread",
    unit="sessions", low=1, high=16,
)  # fmt: skip

INTRA_OP_THREADS = OptionField(
    "intra_op_threads", Kind.INT, 0, "ONNX Runtime threads per instance (0: one per core)",
    unit="threads", low=0, high=256, label="Intra-op threads", zero="one per core",
)  # fmt: skip

BATCHING = OptionTable(
    MAX_BATCH_SIZE, MAX_QUEUE_DELAY_MS, PREFERRED_BATCH_SIZES, MAX_QUEUE_SIZE, REQUEST_TIMEOUT_MS, INSTANCES,
    INTRA_OP_THREADS,
)  # fmt: skip
"""The batching options (with how many sessions run batches, on how many threads each), in this
order everywhere (the order is part of the spec hash)."""


@dataclass(frozen=True)
class BatchingConfig:
    """How a worker batches: Triton's dynamic batcher, with the table's bounds checked at construction."""

    max_batch_size: int = MAX_BATCH_SIZE.default
    max_queue_delay_ms: float = MAX_QUEUE_DELAY_MS.default
    preferred_batch_sizes: tuple[int, ...] = PREFERRED_BATCH_SIZES.default
    max_queue_size: int = MAX_QUEUE_SIZE.default
    request_timeout_ms: float = REQUEST_TIMEOUT_MS.default
    instances: int = INSTANCES.default
    intra_op_threads: int = INTRA_OP_THREADS.default

    def __post_init__(self) -> None:
        for option in BATCHING.values():
            object.__setattr__(self, option.name, option.check(getattr(self, option.name)))
        sizes = self.preferred_batch_sizes
        for size in sizes:
            if size > self.max_batch_size:
                limit = f"between 1 and the max batch size ({self.max_batch_size})"
                raise ContractError(PREFERRED_BATCH_SIZES.name, f"every size must be {limit}; {size} is not")
        if list(sizes) != sorted(set(sizes)):
            raise ContractError(PREFERRED_BATCH_SIZES.name, "sizes must be distinct and increasing")

    def unbatched(self) -> BatchingConfig:
        """The same options for a model with a fixed batch dimension: one row per run, nothing to wait for."""
        return replace(self, max_batch_size=1, preferred_batch_sizes=(), max_queue_delay_ms=0.0)

    def values(self) -> dict[str, Any]:
        """Each option's value by name, in the table's order (sizes as a tuple)."""
        return {option: getattr(self, option) for option in BATCHING}


def encode_batching(config: BatchingConfig) -> dict[str, Any]:
    """The JSON object (sizes as a list)."""
    return {
        name: list(value) if isinstance(value, tuple) else value for name, value in config.values().items()
    }


def parse_batching(payload: object, *, base: BatchingConfig | None = None) -> BatchingConfig:
    """The config a JSON object asks for; ``ContractError`` names the first field it refuses."""
    if not isinstance(payload, dict):
        raise ContractError("batching", "must be an object")
    values = (base or BatchingConfig()).values()
    for name, value in payload.items():
        option = BATCHING.get(name) if isinstance(name, str) else None
        if option is None:
            raise ContractError(str(name), "is not a batching option")
        checked = option.check(value)
        values[name] = tuple(sorted(set(checked))) if option.kind is Kind.SIZES else checked
    return BatchingConfig(**values)
