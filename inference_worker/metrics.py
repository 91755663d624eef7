"""Prometheus metrics and the interval statistics of reports, from one set of counters.

The counters and histograms live on the event loop thread and cost a bisect
and two additions per observation (no locks, no label lookups on the hot
path). ``WorkerCollector`` turns them into Prometheus families at scrape time;
every series carries the ``model`` and ``version`` labels. Histograms are real
cumulative-bucket histograms; the reporter computes interval quantiles from
the difference of two snapshots, as ``histogram_quantile`` does.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from inference_worker.batcher import Batch
from inference_worker.contracts.report import DeviceStats
from inference_worker.errors import OUTCOMES

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
PROTOCOLS: tuple[str, ...] = ("http", "grpc")


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to the largest batch, which is always a bucket of its own."""
    bounds = [1.0]
    while bounds[-1] * 2 < max_batch_size:
        bounds.append(bounds[-1] * 2)
    if bounds[-1] != max_batch_size:
        bounds.append(float(max_batch_size))
    return tuple(bounds)


@dataclass(frozen=True)
class HistogramSnapshot:
    """Per-bucket counts (not cumulative; the last is +Inf), sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int

    def minus(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """What was observed between ``earlier`` and this snapshot."""
        counts = tuple(now - then for now, then in zip(self.counts, earlier.counts, strict=True))
        return HistogramSnapshot(self.bounds, counts, self.total - earlier.total, self.count - earlier.count)

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding rank q (Prometheus' method); None if empty."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for index, count in enumerate(self.counts):
            if count and seen + count >= rank:
                if index == len(self.bounds):
                    return self.bounds[-1]  # in +Inf: the largest finite bound is all we know
                lower = self.bounds[index - 1] if index else 0.0
                return lower + (self.bounds[index] - lower) * (rank - seen) / count
            seen += count
        return self.bounds[-1]

    def mean(self) -> float | None:
        """Mean observation; None if empty."""
        return self.total / self.count if self.count else None


class Histogram:
    """A histogram updated from the event loop thread only."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times
        self.count += times

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total, self.count)

    def family(self, name: str, doc: str, labels: list[str], values: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labels)
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric(values, buckets, self.total)
        return family


def process_stats() -> tuple[float, int]:
    """CPU seconds used by this process, and its resident memory in bytes."""
    times = os.times()
    cpu = times.user + times.system
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = peak if sys.platform == "darwin" else peak * 1024
    return cpu, rss


class WorkerMetrics:
    """Counters and histograms of one served model."""

    def __init__(self, model: str, version: str, max_batch_size: int) -> None:
        self.model = model
        self.version = version
        self.requests = {(protocol, outcome): 0 for protocol in PROTOCOLS for outcome in OUTCOMES}
        self.request_latency = Histogram(LATENCY_BUCKETS)
        self.queue_latency = Histogram(LATENCY_BUCKETS)
        self.compute_latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(batch_buckets(max_batch_size))
        self.inferences = 0
        self.batches = 0
        self.gauges: dict[str, Callable[[], float]] = {}
        self.device_stats: Callable[[], list[DeviceStats]] = list

    def on_request(self, protocol: str, outcome: str, seconds: float) -> None:
        """A request answered (any outcome), ``seconds`` after it was read."""
        self.requests[protocol, outcome] += 1
        self.request_latency.observe(seconds)

    def on_batch(self, batch: Batch) -> None:
        """A batch finished: its size, each request's queue time and compute time."""
        self.batches += 1
        self.inferences += batch.rows
        self.batch_size.observe(batch.rows)
        self.compute_latency.observe(batch.compute_s, len(batch.entries))
        started, queue = batch.started, self.queue_latency
        for entry in batch.entries:
            queue.observe(started - entry.enqueued)

    def registry(self) -> CollectorRegistry:
        """A registry holding only this worker's series."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(self))
        return registry

    def render(self, registry: CollectorRegistry) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(registry)


class WorkerCollector(Collector):
    """Builds the Prometheus families from ``WorkerMetrics`` at scrape time."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        base, values = ["model", "version"], [m.model, m.version]
        requests = CounterMetricFamily(
            "kiln_worker_requests", "Inference requests answered, by protocol and outcome.",
            labels=[*base, "protocol", "outcome"],
        )  # fmt: skip
        for (protocol, outcome), count in m.requests.items():
            requests.add_metric([*values, protocol, outcome], count)
        yield requests
        yield m.request_latency.family(
            "kiln_worker_request_duration_seconds", "Time from request read to response ready.", base, values
        )
        yield m.queue_latency.family(
            "kiln_worker_queue_duration_seconds", "Time a request waited in the batch queue.", base, values
        )
        yield m.compute_latency.family(
            "kiln_worker_compute_duration_seconds",
            "Model run time of the batch a request ran in.",
            base,
            values,
        )
        yield m.batch_size.family("kiln_worker_batch_size", "Rows per batch the model ran.", base, values)
        for name, doc, value in (
            ("kiln_worker_inferences", "Rows (samples) the model ran.", m.inferences),
            ("kiln_worker_batches", "Batches the model ran.", m.batches),
        ):
            counter = CounterMetricFamily(name, doc, labels=base)
            counter.add_metric(values, value)
            yield counter
        cpu, rss = process_stats()
        yield _gauge(
            "kiln_worker_process_cpu_seconds_total", "CPU time of the worker process.", base, values, cpu
        )
        yield _gauge("kiln_worker_process_resident_memory_bytes", "Resident memory.", base, values, rss)
        for name, read in m.gauges.items():
            yield _gauge(
                f"kiln_worker_{name}", name.replace("_", " ").capitalize() + ".", base, values, read()
            )
        yield from _device_families(m.device_stats(), base, values)


def _gauge(name: str, doc: str, labels: list[str], values: list[str], value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=labels)
    gauge.add_metric(values, value)
    return gauge


_DEVICE_GAUGES: tuple[tuple[str, str, Callable[[DeviceStats], float | None]], ...] = (
    ("kiln_worker_device_memory_used_bytes", "Device memory in use.", lambda d: d.memory_used_bytes),
    ("kiln_worker_device_memory_total_bytes", "Device memory in all.", lambda d: d.memory_total_bytes),
    (
        "kiln_worker_device_utilization_ratio",
        "Device compute utilization (0-1) over the last sample period.",
        lambda d: d.utilization_ratio,
    ),
)


def _device_families(devices: list[DeviceStats], base: list[str], values: list[str]) -> Iterator[Metric]:
    if not devices:
        return
    for name, doc, read in _DEVICE_GAUGES:
        gauge = GaugeMetricFamily(name, doc, labels=[*base, "device"])
        for device in devices:
            gauge.add_metric([*values, str(device.index)], float(read(device) or 0.0))
        yield gauge


def gpu_reader(device_id: int | None) -> Callable[[], list[DeviceStats]]:
    """A function reading the GPU's memory and utilization through NVML; empty on CPU.

    nvidia-ml-py is optional (GPU images only): without it, or without a
    driver, the worker logs once and reports no device stats.
    """
    if device_id is None:
        return list
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
        name = pynvml.nvmlDeviceGetName(handle)
    except Exception as exc:  # ImportError, or any NVMLError: no stats, keep serving
        logging.getLogger("inference_worker.metrics").warning("no GPU stats for cuda:%d: %s", device_id, exc)
        return list

    def read() -> list[DeviceStats]:
        try:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception:  # a transient NVML error must not fail a scrape or a report
            return []
        return [
            DeviceStats(
                index=device_id,
                name=name.decode() if isinstance(name, bytes) else str(name),
                memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total),
                utilization_ratio=utilization.gpu / 100.0,
            )
        ]

    return read
