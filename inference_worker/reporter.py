"""Reports pushed to the platform: ``POST <--report-url>`` every ``--report-interval-s``.

Headers: ``Authorization: Bearer <--report-token>``, ``Content-Type: application/json``.
Any 2xx answer counts as delivered. The body is a ``contracts.report`` report
(its docstring shows the JSON); the platform reads it through the same module.

The first report goes out as soon as the worker is ready, so a platform that
learns a worker's ports or readiness from its reports (``listen``, ``state``)
can route it at once; a stop (``nudge``) sends one at once.

Quantiles are interpolated inside histogram buckets (Prometheus'
``histogram_quantile``), so they are as precise as the buckets. A platform
that is down, slow or failing never slows inference: each POST has a bounded
timeout, failures back off exponentially (to 16 intervals, at most a
minute), the outage is logged once when it starts and once when it ends.
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
from inference_worker.contracts.histograms import HistogramRecord
from inference_worker.contracts.report import (
    Counters,
    DeviceStats,
    Interval,
    Listen,
    ProcessStats,
    Quantiles,
    Window,
    WorkerReport,
    encode_report,
)
from inference_worker.dataplane import DataPlane
from inference_worker.metrics import HistogramSnapshot, WorkerMetrics, process_stats

log = logging.getLogger("inference_worker.reporter")

MAX_BACKOFF_S = 60.0


def _moment(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _quantiles_ms(window: HistogramSnapshot) -> Quantiles:
    def ms(q: float) -> float | None:
        value = window.quantile(q)
        return None if value is None else round(value * 1000, 3)

    return Quantiles(ms(0.5), ms(0.95), ms(0.99))


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
        device_stats: Callable[[], list[DeviceStats]] = list,
        listen: Listen | None = None,
    ) -> None:
        self._config = config
        self._listen = listen
        self._wake = asyncio.Event()
        self._dp = dataplane
        self._metrics = dataplane.metrics
        self._device_stats = device_stats
        self._sequence = 0
        self._failures = 0
        self._last_state = ""
        self._baseline = _Baseline(self._metrics)
        self._started = self._baseline.wall

    def build(self) -> tuple[WorkerReport, _Baseline]:
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
        report = WorkerReport(
            worker_id=self._config.worker_id,
            model_name=self._dp.model_name,
            model_version=self._dp.model_version,
            state=self._dp.reported_state,
            sequence=self._sequence,
            started_at=_moment(self._started),
            interval=Interval(_moment(base.wall), _moment(end.wall), round(seconds, 3)),
            counters=Counters(
                requests=end.outcomes,
                requests_by_protocol=by_protocol,
                inferences=m.inferences,
                batches=m.batches,
            ),
            window=Window(
                requests=request.count,
                latency_ms=_quantiles_ms(request),
                queue_ms=_quantiles_ms(end.queue.minus(base.queue)),
                compute_ms=_quantiles_ms(end.compute.minus(base.compute)),
                outcomes={
                    outcome: count - base.outcomes.get(outcome, 0)
                    for outcome, count in end.outcomes.items()
                    if count - base.outcomes.get(outcome, 0)
                },
                latency_histogram=HistogramRecord(
                    tuple(round(bound * 1000, 6) for bound in request.bounds), request.counts
                ),
                mean_batch_size=None if mean_batch is None else round(mean_batch, 3),
                batch_size_histogram=HistogramRecord(
                    tuple(int(bound) for bound in batch.bounds), batch.counts
                ),
            ),
            queue_depth=self._dp.queue_depth,
            in_flight=self._dp.in_flight,
            process=ProcessStats(
                cpu_percent=round((end.cpu - base.cpu) / seconds * 100, 1),
                cpu_seconds=round(end.cpu, 3),
                rss_bytes=rss,
            ),
            devices=tuple(self._device_stats()),
            listen=self._listen,
        )
        return report, end

    async def run(self) -> None:
        """Report every interval until cancelled; back off while the platform fails."""
        import httpx

        headers = {"Authorization": f"Bearer {self._config.token}", "Content-Type": "application/json"}
        timeout = httpx.Timeout(min(self._config.timeout_s, self._config.interval_s))
        async with httpx.AsyncClient(timeout=timeout, headers=headers, follow_redirects=False) as client:
            delay = 0.0  # the first report says "ready" at once
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
            response = await client.post(self._config.url, content=orjson.dumps(encode_report(report)))
            problem = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except Exception as exc:  # any transport failure is an outage, never a crash
            problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if problem is None:
            if self._failures:
                log.warning("reports delivered again after %d failed attempts", self._failures)
            if report.state != self._last_state:
                log.info("reported state %s to %s", report.state, self._config.url)
                self._last_state = report.state
            self._failures = 0
            self._baseline = end
            return self._config.interval_s
        self._failures += 1
        if self._failures == 1:
            log.warning("cannot deliver reports to %s (%s); retrying with backoff", self._config.url, problem)
        interval = self._config.interval_s
        ceiling = max(interval, min(MAX_BACKOFF_S, interval * 16))
        return float(min(interval * 2 ** min(self._failures, 16), ceiling))
