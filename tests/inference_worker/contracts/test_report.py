"""The worker report: what a worker posts is what the platform reads, and a bad report is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.report import SCHEMA, encode_report, parse_report
from tests.support.contract_samples import REPORT


def test_a_report_survives_encode_json_and_parse() -> None:
    payload = json.loads(json.dumps(encode_report(REPORT)))

    assert payload["schema"] == SCHEMA == "kiln.worker-report/v1"
    assert parse_report(payload) == REPORT


def test_a_short_report_takes_the_defaults_of_a_worker_that_measured_nothing() -> None:
    short = {
        "schema": SCHEMA,
        "interval": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:01Z"},
        "window": {"requests": 1},
    }

    report = parse_report(short)

    assert (report.window.requests, report.window.latency_ms.p50, report.window.latency_histogram) == (
        1,
        None,
        None,
    )
    assert (report.queue_depth, report.devices, report.process.rss_bytes, report.listen) == (
        0,
        (),
        None,
        None,
    )
    assert report.interval.end.tzinfo is not None


def valid(**changes: Any) -> dict[str, Any]:
    return {**encode_report(REPORT), **changes}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "report"),
        ({"schema": "kiln.worker-report/v2"}, "schema"),
        ({"schema": SCHEMA, "window": {}}, "interval"),
        (valid(interval={"start": "yesterday", "end": "2026-01-01T00:00:00Z"}), "interval.start"),
        (valid(window={"requests": -3}), "window.requests"),
        (valid(window={"latency_ms": {"p99": "slow"}}), "window.latency_ms.p99"),
        (valid(window={"outcomes": {f"o{i}": 1 for i in range(33)}}), "window.outcomes"),
        (
            valid(window={"latency_histogram": {"le": [1, "+Inf"], "counts": [1]}}),
            "window.latency_histogram.counts",
        ),
        (valid(queue_depth=True), "queue_depth"),
        (valid(devices=[{"index": 0}] * 17), "devices"),
        (valid(devices=[{"index": 0, "memory_used_bytes": -1}]), "devices[0].memory_used_bytes"),
        (valid(listen={"http_port": 0}), "listen.http_port"),
        (valid(listen={"http_port": 8080, "grpc_port": 65536}), "listen.grpc_port"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(ContractError) as refused:
        parse_report(payload)

    assert refused.value.field == field
