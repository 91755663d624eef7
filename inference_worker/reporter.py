"""Reports pushed to the platform: ``POST <--report-url>`` every ``--report-interval-s``.

Headers: ``Authorization: Bearer <--report-token>``, ``Content-Type: application/json``.
Any 2xx answer counts as delivered. Schema (``"schema": "kiln.worker-report/v1"``)::

    {
      "schema": "kiln.worker-report/v1",
      "worker_id": "w-17",                   # --worker-id
      "model": {"name": "resnet", "version": "3"},
      "state": "ready",                      # loading | ready | draining (from SIGTERM on)
      "listen": {"http_port": 8080, "grpc_port": 8081},  # the ports bound (chosen at start for port 0)
      "sequence": 12,                        # reports built since start, 1-based
      "started_at": "2025-01-01T12:00:00.000000Z",
      "interval": {                          # since the last *delivered* report (or start):
        "start": "2025-01-01T12:00:55.000000Z",  # a report lost to an outage is folded
        "end": "2025-01-01T12:01:00.000000Z",    # into the next one, so nothing is lost
        "seconds": 5.0
      },
      "counters": {                          # since start, monotonic
        "requests": {"success": 1200, "invalid_argument": 3, "unsupported_media": 0,
                     "payload_too_large": 0, "not_found": 1, "overloaded": 0, "timeout": 0,
                     "unavailable": 0, "internal": 0, "cancelled": 0},
        "requests_by_protocol": {"http": 1100, "grpc": 104},
        "inferences": 1500,                  # rows (samples) the model ran
        "batches": 210
      },
      "window": {                            # over the interval
        "requests": 240,
        "latency_ms": {"p50": 3.1, "p95": 7.9, "p99": 12.0},     # null values when no request
        "queue_ms": {"p50": 0.4, "p95": 1.2, "p99": 2.0},
        "compute_ms": {"p50": 2.2, "p95": 5.0, "p99": 6.1},
        "outcomes": {"success": 238, "invalid_argument": 2},   # requests by outcome, this interval
        "latency_histogram": {"le": [0.25, 0.5, ..., "+Inf"], "counts": [...]},  # ms, per bucket
        "mean_batch_size": 7.3,              # null when no batch ran
        "batch_size_histogram": {"le": [1, 2, 4, 8, 16, 32, "+Inf"], "counts": [3, 1, 0, 20, 9, 0, 0]}
      },
      "queue_depth": 4,                      # now
      "in_flight": 9,                        # now
      "process": {"cpu_percent": 143.0,      # over the interval; 100 = one core
                  "cpu_seconds": 812.4, "rss_bytes": 210763776},
      "devices": [                           # empty on CPU
        {"index": 0, "name": "NVIDIA H100", "memory_used_bytes": 1.2e9,
         "memory_total_bytes": 8.0e10, "utilization_ratio": 0.63}
      ]
    }

The first report goes out one second after the worker is ready (or after one
interval, if shorter), so a platform that learns a worker's ports from its
reports can route it at once; a stop (``nudge``) sends one at once too.
Quantiles are interpolated inside histogram buckets (Prometheus'
``histogram_quantile``), so they are as precise as the buckets. A platform
that is down, slow or failing never slows inference: each POST has a bounded
timeout, failures back off exponentially (to 16 intervals, at most a
minute), the outage is
logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from inference_worker.config import ReportConfig
from inference_worker.dataplane import DataPlane
from inference_worker.metrics import HistogramSnapshot, WorkerMetrics, process_stats

log = logging.getLogger("inference_worker.reporter")

SCHEMA = "kiln.worker-report/v1"
MAX_BACKOFF_S = 60.0
FIRST_REPORT_S = 1.0


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _quantiles_ms(window: HistogramSnapshot) -> dict[str, float | None]:
    def ms(q: float) -> float | None:
        value = window.quantile(q)
        return None if value is None else round(value * 1000, 3)

    return {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99)}


def _by_outcome(metrics: WorkerMetrics) -> dict[str, int]:
    totals: dict[str, int] = {}
    for (_protocol, outcome), count in metrics.requests.items():
        totals[outcome] = totals.get(outcome, 0) + count
    return totals


class _Baseline:
    """What the last delivered report saw: the start of the next interval."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.wall = time.time()
        self.cpu, _ = process_stats()
        self.request = metrics.request_latency.snapshot()
        self.queue = metrics.queue_latency.snapshot()
        self.compute = metrics.compute_latency.snapshot()
        self.batch = metrics.batch_size.snapshot()
        self.outcomes = _by_outcome(metrics)


class Reporter:
    """Builds reports and pushes them; ``run()`` is a task of the worker's loop."""

    def __init__(
        self,
        config: ReportConfig,
        dataplane: DataPlane,
        *,
        device_stats: Callable[[], list[dict[str, Any]]] = list,
        listen: dict[str, int] | None = None,
    ) -> None:
        self._config = config
        self._listen = dict(listen or {})
        self._wake = asyncio.Event()
        self._dp = dataplane
        self._metrics = dataplane.metrics
        self._device_stats = device_stats
        self._sequence = 0
        self._failures = 0
        self._baseline = _Baseline(self._metrics)
        self._started = self._baseline.wall

    def build(self) -> tuple[dict[str, Any], _Baseline]:
        """The next report, and the baseline it ends (adopted once it is delivered)."""
        m, base, end = self._metrics, self._baseline, _Baseline(self._metrics)
        self._sequence += 1
        seconds = max(end.wall - base.wall, 1e-9)
        request, batch = end.request.minus(base.request), end.batch.minus(base.batch)
        _, rss = process_stats()
        by_protocol: dict[str, int] = {}
        for (protocol, _outcome), count in m.requests.items():
            by_protocol[protocol] = by_protocol.get(protocol, 0) + count
        mean_batch = batch.mean()
        report = {
            "schema": SCHEMA,
            "worker_id": self._config.worker_id,
            "model": {"name": self._dp.model_name, "version": self._dp.model_version},
            "state": self._dp.reported_state,
            "listen": self._listen,
            "sequence": self._sequence,
            "started_at": _iso(self._started),
            "interval": {"start": _iso(base.wall), "end": _iso(end.wall), "seconds": round(seconds, 3)},
            "counters": {
                "requests": end.outcomes,
                "requests_by_protocol": by_protocol,
                "inferences": m.inferences,
                "batches": m.batches,
            },
            "window": {
                "requests": request.count,
                "latency_ms": _quantiles_ms(request),
                "queue_ms": _quantiles_ms(end.queue.minus(base.queue)),
                "compute_ms": _quantiles_ms(end.compute.minus(base.compute)),
                "outcomes": {
                    outcome: count - base.outcomes.get(outcome, 0)
                    for outcome, count in end.outcomes.items()
                    if count - base.outcomes.get(outcome, 0)
                },
                "latency_histogram": {
                    "le": [round(bound * 1000, 6) for bound in request.bounds] + ["+Inf"],
                    "counts": list(request.counts),
                },
                "mean_batch_size": None if mean_batch is None else round(mean_batch, 3),
                "batch_size_histogram": {
                    "le": [int(bound) for bound in batch.bounds] + ["+Inf"],
                    "counts": list(batch.counts),
                },
            },
            "queue_depth": self._dp.queue_depth,
            "in_flight": self._dp.in_flight,
            "process": {
                "cpu_percent": round((end.cpu - base.cpu) / seconds * 100, 1),
                "cpu_seconds": round(end.cpu, 3),
                "rss_bytes": rss,
            },
            "devices": self._device_stats(),
        }
        return report, end

    async def run(self) -> None:
        """Report every interval until cancelled; back off while the platform fails."""
        import httpx

        headers = {"Authorization": f"Bearer {self._config.token}", "Content-Type": "application/json"}
        timeout = httpx.Timeout(min(self._config.timeout_s, self._config.interval_s))
        async with httpx.AsyncClient(timeout=timeout, headers=headers, follow_redirects=False) as client:
            delay = min(self._config.interval_s, FIRST_REPORT_S)
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
                delay = await self.push(client)

    def nudge(self) -> None:
        """Send the next report now (the worker's state changed); call on the worker's loop."""
        self._wake.set()

    async def push(self, client: Any) -> float:
        """Send one report; returns the delay until the next attempt."""
        assert self._config.url is not None  # noqa: S101 - run() only starts with a URL
        report, end = self.build()
        try:
            response = await client.post(self._config.url, content=orjson.dumps(report))
            problem = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except Exception as exc:  # any transport failure is an outage, never a crash
            problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if problem is None:
            if self._failures:
                log.warning("reports delivered again after %d failed attempts", self._failures)
            self._failures = 0
            self._baseline = end
            return self._config.interval_s
        self._failures += 1
        if self._failures == 1:
            log.warning("cannot deliver reports to %s (%s); retrying with backoff", self._config.url, problem)
        interval = self._config.interval_s
        ceiling = max(interval, min(MAX_BACKOFF_S, interval * 16))
        return float(min(interval * 2 ** min(self._failures, 16), ceiling))
