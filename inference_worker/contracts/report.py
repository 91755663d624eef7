"""The worker report: what a worker pushes to the platform every report interval.

``POST <--report-url>`` with ``Authorization: Bearer <token>``, JSON::

    {
      "schema": "kiln.worker-report/v1",
      "worker_id": "w-17",
      "model": {"name": "resnet", "version": "3"},
      "state": "ready",                      # loading | ready | draining | failed (draining from SIGTERM on)
      "listen": {"http_port": 8080, "grpc_port": 8081},  # the ports bound (port 0: chosen at start); -1: off
      "sequence": 12,                        # reports built since start, 1-based
      "started_at": "2025-01-01T12:00:00.000000Z",
      "interval": {                          # since the last *delivered* report (or start):
        "start": "2025-01-01T12:00:55.000000Z",  # a report lost to an outage is folded
        "end": "2025-01-01T12:01:00.000000Z",    # into the next one, so nothing is lost
        "seconds": 5.0
      },
      "counters": {                          # since start, monotonic
        "requests": {"success": 1200, "invalid_argument": 3, ...},   # by outcome
        "requests_by_protocol": {"http": 1100, "grpc": 104},
        "inferences": 1500,                  # rows (samples) the model ran
        "batches": 210
      },
      "window": {                            # over the interval
        "requests": 240,
        "latency_ms": {"p50": 3.1, "p95": 7.9, "p99": 12.0},     # null values when no request
        "queue_ms": {...}, "compute_ms": {...},
        "outcomes": {"success": 238, "invalid_argument": 2},
        "latency_histogram": {"le": [0.25, 0.5, ..., "+Inf"], "counts": [...]},  # ms
        "mean_batch_size": 7.3,              # null when no batch ran
        "batch_size_histogram": {"le": [1, 2, 4, 8, 16, 32, "+Inf"], "counts": [...]}
      },
      "queue_depth": 4, "in_flight": 9,     # now
      "process": {"cpu_percent": 143.0, "cpu_seconds": 812.4, "rss_bytes": 210763776},
      "devices": [{"index": 0, "name": "NVIDIA H100", "memory_used_bytes": 1200000000,
                   "memory_total_bytes": 80000000000, "utilization_ratio": 0.63}]   # empty on CPU
    }

``parse_report`` needs the schema, the interval and the window; everything
else falls back to what a worker that measured nothing would send (the
platform has always taken such short reports). Sizes are bounded before the
platform stores anything: at most ``MAX_OUTCOMES`` outcomes of at most
``MAX_OUTCOME_LENGTH`` characters, ``MAX_DEVICES`` devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.histograms import HistogramRecord, encode_histogram, parse_histogram
from inference_worker.contracts.wire import at, integer, mapping, optional_number, sequence, text

SCHEMA = "kiln.worker-report/v1"
LOADING, READY, DRAINING, FAILED = "loading", "ready", "draining", "failed"
"""The states a worker reports (``dataplane.State``'s values)."""
SUCCESS = "success"
"""The outcome of an answered request; any other outcome (a refusal, a timeout, a failure) is an error."""
MAX_OUTCOMES = 32
MAX_OUTCOME_LENGTH = 40
MAX_DEVICES = 16


@dataclass(frozen=True)
class Quantiles:
    """Milliseconds; None when nothing was measured."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class Interval:
    """The time a report's window covers (aware datetimes, UTC)."""

    start: datetime
    end: datetime
    seconds: float = 0.0


@dataclass(frozen=True)
class Counters:
    """Totals since the worker started."""

    requests: Mapping[str, int] = field(default_factory=dict)
    """By outcome (``success``, ``invalid_argument``...)."""
    requests_by_protocol: Mapping[str, int] = field(default_factory=dict)
    inferences: int = 0
    batches: int = 0


@dataclass(frozen=True)
class Window:
    """What happened during the interval."""

    requests: int = 0
    latency_ms: Quantiles = field(default_factory=Quantiles)
    queue_ms: Quantiles = field(default_factory=Quantiles)
    compute_ms: Quantiles = field(default_factory=Quantiles)
    outcomes: Mapping[str, int] = field(default_factory=dict)
    latency_histogram: HistogramRecord | None = None
    mean_batch_size: float | None = None
    batch_size_histogram: HistogramRecord | None = None


@dataclass(frozen=True)
class ProcessStats:
    cpu_percent: float | None = None
    """Over the interval; 100 is one core."""
    cpu_seconds: float | None = None
    rss_bytes: int | None = None


@dataclass(frozen=True)
class DeviceStats:
    """One GPU the worker runs on."""

    index: int
    name: str = ""
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_ratio: float | None = None


@dataclass(frozen=True)
class Listen:
    """Where the worker listens on its machine: the ports it bound (-1: that server is off).

    A worker started on port 0 (a swarm task on a shared host) says so here; the platform
    adds the machine's address.
    """

    http_port: int
    grpc_port: int = -1


@dataclass(frozen=True)
class WorkerReport:
    """One report; counters are cumulative, the window covers ``interval``."""

    interval: Interval
    window: Window
    worker_id: str = ""
    model_name: str = ""
    model_version: str = ""
    state: str = ""
    sequence: int = 0
    started_at: datetime | None = None
    counters: Counters = field(default_factory=Counters)
    queue_depth: int = 0
    in_flight: int = 0
    process: ProcessStats = field(default_factory=ProcessStats)
    devices: tuple[DeviceStats, ...] = ()
    listen: Listen | None = None


# -- encode ---------------------------------------------------------------------------------------
def timestamp(moment: datetime) -> str:
    """``2025-01-01T12:00:00.000000Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _quantiles(q: Quantiles) -> dict[str, float | None]:
    return {"p50": q.p50, "p95": q.p95, "p99": q.p99}


def _histogram(histogram: HistogramRecord | None) -> dict[str, Any] | None:
    return None if histogram is None else encode_histogram(histogram)


def encode_report(report: WorkerReport) -> dict[str, Any]:
    """The JSON object a worker posts."""
    window, process = report.window, report.process
    return {
        "schema": SCHEMA,
        "worker_id": report.worker_id,
        "model": {"name": report.model_name, "version": report.model_version},
        "state": report.state,
        "sequence": report.sequence,
        "started_at": None if report.started_at is None else timestamp(report.started_at),
        "interval": {
            "start": timestamp(report.interval.start),
            "end": timestamp(report.interval.end),
            "seconds": report.interval.seconds,
        },
        "counters": {
            "requests": dict(report.counters.requests),
            "requests_by_protocol": dict(report.counters.requests_by_protocol),
            "inferences": report.counters.inferences,
            "batches": report.counters.batches,
        },
        "window": {
            "requests": window.requests,
            "latency_ms": _quantiles(window.latency_ms),
            "queue_ms": _quantiles(window.queue_ms),
            "compute_ms": _quantiles(window.compute_ms),
            "outcomes": dict(window.outcomes),
            "latency_histogram": _histogram(window.latency_histogram),
            "mean_batch_size": window.mean_batch_size,
            "batch_size_histogram": _histogram(window.batch_size_histogram),
        },
        "queue_depth": report.queue_depth,
        "in_flight": report.in_flight,
        "process": {
            "cpu_percent": process.cpu_percent,
            "cpu_seconds": process.cpu_seconds,
            "rss_bytes": process.rss_bytes,
        },
        "devices": [
            {
                "index": d.index,
                "name": d.name,
                "memory_used_bytes": d.memory_used_bytes,
                "memory_total_bytes": d.memory_total_bytes,
                "utilization_ratio": d.utilization_ratio,
            }
            for d in report.devices
        ],
        **({"listen": encode_listen(report.listen)} if report.listen is not None else {}),
    }


def encode_listen(listen: Listen) -> dict[str, int]:
    """``{"http_port": 41234, "grpc_port": 41235}``: in reports, and in the worker's ``--listen-file``."""
    return {"http_port": listen.http_port, "grpc_port": listen.grpc_port}


# -- parse ----------------------------------------------------------------------------------------
class _Object:
    """A JSON object being read, with its path for errors; absent keys read as their default."""

    def __init__(self, value: object, where: str) -> None:
        self.value = mapping(value, where)
        self.where = where

    def object(self, key: str) -> _Object:
        return _Object(self.value.get(key, {}), at(self.where, key))

    def count(self, key: str) -> int:
        return integer(self.value.get(key, 0), at(self.where, key), low=0)

    def amount(self, key: str) -> int | None:
        value = self.value.get(key)
        return None if value is None else integer(value, at(self.where, key), low=0)

    def measure(self, key: str) -> float | None:
        return optional_number(self.value.get(key), at(self.where, key), low=0)

    def text(self, key: str) -> str:
        return text(self.value.get(key, ""), at(self.where, key))

    def time(self, key: str) -> datetime:
        value, where = self.value.get(key), at(self.where, key)
        if not isinstance(value, str):
            raise ContractError(where, "must be an ISO 8601 timestamp")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ContractError(where, f"{value!r} is not an ISO 8601 timestamp") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def quantiles(self, key: str) -> Quantiles:
        q = self.object(key)
        return Quantiles(q.measure("p50"), q.measure("p95"), q.measure("p99"))

    def tally(self, key: str) -> dict[str, int]:
        counts = self.object(key)
        if len(counts.value) > MAX_OUTCOMES:
            raise ContractError(counts.where, f"must have at most {MAX_OUTCOMES} entries")
        for name in counts.value:
            if len(name) > MAX_OUTCOME_LENGTH:
                raise ContractError(counts.where, f"names are at most {MAX_OUTCOME_LENGTH} characters long")
        return {name: counts.count(name) for name in counts.value}

    def histogram(self, key: str) -> HistogramRecord | None:
        value = self.value.get(key)
        return None if value is None else parse_histogram(value, at(self.where, key))


def parse_report(payload: object) -> WorkerReport:
    """The report in a decoded JSON value; ``ContractError`` names the first field refused."""
    report = _Object(mapping(payload, "report"), "")  # paths inside start at the top: "window.requests"
    if report.value.get("schema") != SCHEMA:
        raise ContractError("schema", f"expected {SCHEMA!r}")
    interval = _Object(report.value.get("interval"), "interval")
    window = _Object(report.value.get("window"), "window")
    model, process, counters = report.object("model"), report.object("process"), report.object("counters")
    devices = sequence(report.value.get("devices", []), "devices", most=MAX_DEVICES)
    return WorkerReport(
        interval=Interval(interval.time("start"), interval.time("end"), interval.measure("seconds") or 0.0),
        window=Window(
            requests=window.count("requests"),
            latency_ms=window.quantiles("latency_ms"),
            queue_ms=window.quantiles("queue_ms"),
            compute_ms=window.quantiles("compute_ms"),
            outcomes=window.tally("outcomes"),
            latency_histogram=window.histogram("latency_histogram"),
            mean_batch_size=window.measure("mean_batch_size"),
            batch_size_histogram=window.histogram("batch_size_histogram"),
        ),
        worker_id=report.text("worker_id"),
        model_name=model.text("name"),
        model_version=model.text("version"),
        state=report.text("state"),
        sequence=report.count("sequence"),
        started_at=None if report.value.get("started_at") is None else report.time("started_at"),
        counters=Counters(
            requests=counters.tally("requests"),
            requests_by_protocol=counters.tally("requests_by_protocol"),
            inferences=counters.count("inferences"),
            batches=counters.count("batches"),
        ),
        queue_depth=report.count("queue_depth"),
        in_flight=report.count("in_flight"),
        process=ProcessStats(
            process.measure("cpu_percent"), process.measure("cpu_seconds"), process.amount("rss_bytes")
        ),
        devices=tuple(_device(_Object(item, at("devices", i))) for i, item in enumerate(devices)),
        listen=parse_listen(report.value["listen"], "listen") if "listen" in report.value else None,
    )


def parse_listen(value: object, where: str = "listen") -> Listen:
    """What ``encode_listen`` wrote; ``ContractError`` unless both are port numbers."""
    listen = _Object(value, where)
    http_port = integer(listen.value.get("http_port"), at(listen.where, "http_port"), low=1)
    grpc_port = integer(listen.value.get("grpc_port", -1), at(listen.where, "grpc_port"), low=-1)
    for where, port in (("http_port", http_port), ("grpc_port", grpc_port)):
        if port > 65535:
            raise ContractError(at(listen.where, where), "must be a port number")
    return Listen(http_port=http_port, grpc_port=grpc_port)


def _device(device: _Object) -> DeviceStats:
    return DeviceStats(
        index=device.count("index"),
        name=device.text("name"),
        memory_used_bytes=device.amount("memory_used_bytes"),
        memory_total_bytes=device.amount("memory_total_bytes"),
        utilization_ratio=device.measure("utilization_ratio"),
    )


def failed_requests(outcomes: Mapping[str, int]) -> int:
    """Requests of these outcome counts that were not answered, whatever the reason."""
    return sum(count for outcome, count in outcomes.items() if outcome != SUCCESS)
