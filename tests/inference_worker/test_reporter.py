"""Reports pushed to a small local HTTP receiver: content, auth, outages and recovery."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from inference_worker.config import ReportConfig, ServerConfig
from inference_worker.contracts.report import Listen, parse_listen, parse_report
from inference_worker.metrics import Histogram, HistogramSnapshot
from tests.support.polling import wait_for
from tests.support.workers import make_config, running, v2_body


class Receiver(ThreadingHTTPServer):
    """Collects POSTed reports; ``status`` is what it answers; ``hold`` stalls every answer."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.reports: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.status = 202
        self.hold = threading.Event()
        self.hold.set()


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.hold.wait(30)
        self.server.auth.append(self.headers.get("Authorization"))
        self.server.reports.append(json.loads(body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - overrides the stdlib signature
        pass


@contextmanager
def receiving(port: int) -> Iterator[Receiver]:
    receiver = Receiver(port)
    thread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.hold.set()
        receiver.shutdown()
        receiver.server_close()
        thread.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report_config(port: int) -> ReportConfig:
    url = f"http://127.0.0.1:{port}/api/v1/workers/w-1/reports/"
    return ReportConfig(url=url, token="s3cret", interval_s=0.1, worker_id="w-1")


def infer(url: str, rows: int = 1) -> int:
    body = v2_body({"x": np.ones((rows, 4), np.float32)})
    return httpx.post(url + "/v2/models/mlp/infer", json=body, timeout=30).status_code


def test_reports_carry_identity_counters_latency_and_batches(models: SimpleNamespace) -> None:
    port = free_port()
    with receiving(port) as receiver, running(make_config(models.mlp, report=report_config(port))) as worker:
        assert [infer(worker.url, rows) for rows in (1, 2, 3)] == [200] * 3
        report = wait_for(
            lambda: next((r for r in receiver.reports if r["counters"]["inferences"] == 6), None)
        )
        assert receiver.auth[0] == "Bearer s3cret"
        assert report["schema"] == "kiln.worker-report/v1"
        assert (report["worker_id"], report["model"], report["state"]) == (
            "w-1",
            {"name": "mlp", "version": "1"},
            "ready",
        )
        assert report["counters"]["requests"]["success"] == 3
        assert report["counters"]["batches"] == 3
        assert report["queue_depth"] == 0
        assert report["process"]["rss_bytes"] > 0
        assert report["devices"] == []
        windows = [r["window"] for r in receiver.reports if r["window"]["requests"]]
        assert sum(w["requests"] for w in windows) == 3
        assert all(w["latency_ms"]["p50"] > 0 for w in windows)
        assert sum(sum(w["batch_size_histogram"]["counts"]) for w in windows) == 3
        sequences = [r["sequence"] for r in receiver.reports]
        assert sequences == sorted(sequences)


def test_reports_survive_an_outage_and_the_next_one_covers_it(
    models: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    caplog.set_level(logging.WARNING, logger="inference_worker.reporter")
    with running(make_config(models.mlp, report=report_config(port))) as worker:
        wait_for(lambda: "cannot deliver reports" in caplog.text)
        assert [infer(worker.url) for _ in range(5)] == [
            200
        ] * 5  # inference goes on while the platform is down
        with receiving(port) as receiver:
            first = wait_for(lambda: receiver.reports and receiver.reports[0])
            assert first["counters"]["requests"]["success"] == 5
            assert first["window"]["requests"] == 5  # the interval spans the outage: nothing is lost
            assert first["interval"]["start"] == first["started_at"]
            receiver.status = 500  # answering errors is an outage too
            count = len(receiver.reports)
            wait_for(lambda: len(receiver.reports) > count + 1)
            receiver.status = 202
            assert infer(worker.url) == 200
            wait_for(lambda: receiver.reports[-1]["counters"]["requests"]["success"] == 6)
    assert caplog.text.count("cannot deliver reports") == 2
    assert caplog.text.count("reports delivered again") == 2


def test_a_stalled_platform_never_stalls_inference(models: SimpleNamespace) -> None:
    port = free_port()
    with receiving(port) as receiver:
        receiver.hold.clear()  # the platform stalls from the worker's first report on
        with running(make_config(models.mlp, report=report_config(port))) as worker:
            wait_for(lambda: worker.metric("kiln_worker_ready") == 1)
            assert [infer(worker.url) for _ in range(20)] == [200] * 20
            assert receiver.reports == []
            receiver.hold.set()
            wait_for(lambda: receiver.reports)


def test_quantiles_interpolate_inside_histogram_buckets() -> None:
    histogram = Histogram((0.001, 0.002, 0.004))
    for value in [0.0005] * 50 + [0.0015] * 40 + [0.003] * 9 + [9.0]:
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.quantile(0.5) == pytest.approx(0.001)
    assert snapshot.quantile(0.7) == pytest.approx(0.0015)
    assert snapshot.quantile(0.99) == pytest.approx(0.004)
    assert snapshot.quantile(1.0) == 0.004  # the +Inf bucket reports the largest finite bound
    assert snapshot.mean() == pytest.approx((0.025 + 0.06 + 0.027 + 9.0) / 100)
    empty = HistogramSnapshot((0.001,), (0, 0), 0.0, 0)
    assert empty.quantile(0.5) is None
    assert snapshot.minus(snapshot).count == 0


def test_a_stop_with_a_shutdown_delay_reports_draining_at_once_and_serves_until_the_delay_ends(
    models: SimpleNamespace, tmp_path: Path
) -> None:
    port = free_port()
    listen_file = tmp_path / "listen.json"
    report = ReportConfig(url=f"http://127.0.0.1:{port}/r/", token="s3cret", interval_s=60, worker_id="w-2")
    config = replace(
        make_config(models.mlp, report=report),
        server=ServerConfig(
            http_port=0, grpc_port=0, drain_timeout_s=20, shutdown_delay_s=3, listen_file=str(listen_file)
        ),
    )
    with receiving(port) as receiver, running(config) as worker:
        bound = Listen(http_port=worker.worker.http_port, grpc_port=worker.worker.grpc_port)
        assert parse_listen(json.loads(listen_file.read_text())) == bound
        first = parse_report(wait_for(lambda: receiver.reports and receiver.reports[0], timeout=5))
        assert (first.state, first.listen) == ("ready", bound)

        stopped_at = time.monotonic()
        worker.worker.stop()
        wait_for(lambda: httpx.get(worker.url + "/v2/health/ready", timeout=5).status_code == 503, timeout=10)
        assert infer(worker.url) == 200  # not ready, but still serving
        said = parse_report(wait_for(lambda: len(receiver.reports) > 1 and receiver.reports[1], timeout=2))
        assert said.state == "draining"
        assert time.monotonic() - stopped_at < 2
        wait_for(lambda: _refused(worker.url), timeout=15)
        assert time.monotonic() - stopped_at >= 2.9


def _refused(url: str) -> bool:
    try:
        return infer(url) != 200
    except httpx.TransportError:
        return True


def test_the_worker_log_says_a_report_only_on_a_change_of_state_or_a_failure(models: SimpleNamespace) -> None:
    port = free_port()
    with receiving(port) as receiver:
        command = [sys.executable, "-m", "inference_worker", "serve", "--model-name", "mlp"]
        command += ["--model-path", str(models.mlp), "--http-port", "0", "--grpc-port", "0"]
        command += ["--report-url", report_config(port).url or "", "--report-token", "s3cret"]
        command += ["--report-interval-s", "0.1", "--worker-id", "w-1", "--log-level", "info"]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: len(receiver.reports) >= 8, timeout=60, message="eight reports")
        finally:
            process.terminate()
            _, log = process.communicate(timeout=60)

    assert "HTTP Request" not in log  # httpx's line per request
    assert log.count("reported state ready") == 1
