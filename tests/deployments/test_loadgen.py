"""The measurements' load generator against a real worker: it counts what the worker answered."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from deployments.loadgen import LOAD_PROTOCOLS, Target, http_request, measure, sample_bodies
from tests.support.onnx_models import mlp
from tests.support.workers import make_config, running


@pytest.mark.parametrize("protocol", LOAD_PROTOCOLS)
def test_every_answer_counted_is_one_the_worker_counted_too(tmp_path: Path, protocol: str) -> None:
    with running(make_config(mlp(tmp_path / "mlp.onnx"))) as worker:
        metadata = httpx.get(f"{worker.url}/v2/models/mlp", timeout=10).json()
        body, headers = sample_bodies(metadata, None)[protocol]
        port = worker.worker.http_port
        target = Target(
            "127.0.0.1", port, http_request("127.0.0.1", port, "/v2/models/mlp/infer", body, headers)
        )
        before = worker.metric("kiln_worker_requests_total", outcome="success")

        cell = measure(target, concurrency=4, seconds=0.5, warmup_s=0.2)

        served = worker.metric("kiln_worker_requests_total", outcome="success") - before
        assert cell.errors == 0
        assert cell.requests > 0
        assert served >= cell.requests  # the warm-up's answers are the worker's, not the cell's
        assert cell.p50_ms is not None
        assert cell.p99_ms is not None
        assert 0 < cell.p50_ms <= cell.p99_ms
        assert cell.throughput_rps == cell.requests / 0.5


def test_answers_other_than_200_are_errors_not_throughput(tmp_path: Path) -> None:
    with running(make_config(mlp(tmp_path / "mlp.onnx"))) as worker:
        metadata = httpx.get(f"{worker.url}/v2/models/mlp", timeout=10).json()
        body, headers = sample_bodies(metadata, None)["http_json"]
        port = worker.worker.http_port
        target = Target(
            "127.0.0.1", port, http_request("127.0.0.1", port, "/v2/models/nope/infer", body, headers)
        )

        cell = measure(target, concurrency=2, seconds=0.3, warmup_s=0.0)

        assert cell.requests == 0
        assert cell.errors > 0
        assert cell.p99_ms is None
