"""One fully populated record of each contract, for the round-trip tests and the spelling scan."""

from __future__ import annotations

from datetime import UTC, datetime

from inference_worker.contracts.activation import ActivationRequest
from inference_worker.contracts.batching import BatchingConfig
from inference_worker.contracts.gateway_stats import GatewaySnapshot, ShadowStats, VariantStats
from inference_worker.contracts.gateway_table import GatewayTableRecord
from inference_worker.contracts.histograms import HistogramRecord
from inference_worker.contracts.launch import LaunchSpec
from inference_worker.contracts.report import (
    Counters,
    DeviceStats,
    Interval,
    Listen,
    ProcessStats,
    Quantiles,
    Window,
    WorkerReport,
)
from inference_worker.contracts.routing import DeploymentRecord, ReplicaRecord, TableRecord, VariantRecord

LATENCY = HistogramRecord((0.25, 0.5, 1.0), (3, 9, 1, 0))

BATCHING = BatchingConfig(
    max_batch_size=16,
    max_queue_delay_ms=2.5,
    preferred_batch_sizes=(4, 8, 16),
    max_queue_size=512,
    request_timeout_ms=1500.0,
    instances=2,
)

LAUNCH = LaunchSpec(
    model_name="fraud",
    model_version="3",
    model_sha256="ab" * 32,
    batching=BATCHING,
    report_url="http://127.0.0.1:8000/api/v1/workers/12/reports/",
    report_interval_s=2.5,
    worker_id="12",
    report_token="s3cret",
    model_path="/opt/kiln/model/model.onnx",
    device="cuda:0",
    host="0.0.0.0",
    http_port=8080,
    grpc_port=-1,
)

TABLE = TableRecord(
    version=1732700000123,
    generated_at="2026-11-27T09:00:00+00:00",
    deployments={
        "fraud": DeploymentRecord(
            model="fraud-model",
            variants=(
                VariantRecord(
                    name="primary",
                    model_name="fraud",
                    version="3",
                    weight=90,
                    replicas=(
                        ReplicaRecord(
                            url="http://127.0.0.1:40123", id=12, grpc="127.0.0.1:40124", version="3"
                        ),
                        ReplicaRecord(url="http://127.0.0.1:40125", id=13, grpc="", version="4"),
                    ),
                ),
                VariantRecord(name="canary", model_name="fraud", version="4", weight=10, activate=True),
                VariantRecord(name="next", model_name="fraud", version="5", weight=0, shadow_percent=25),
            ),
        )
    },
)

REPORT = WorkerReport(
    interval=Interval(
        datetime(2026, 1, 1, 12, 0, 55, 120000, tzinfo=UTC), datetime(2026, 1, 1, 12, 1, 0, tzinfo=UTC), 4.88
    ),
    window=Window(
        requests=240,
        latency_ms=Quantiles(3.1, 7.9, 12.0),
        queue_ms=Quantiles(0.4, 1.2, 2.0),
        compute_ms=Quantiles(2.2, 5.0, 6.1),
        outcomes={"success": 238, "invalid_argument": 2},
        latency_histogram=LATENCY,
        mean_batch_size=7.3,
        batch_size_histogram=HistogramRecord((1, 2, 4, 8), (3, 1, 0, 20, 0)),
    ),
    worker_id="w-17",
    model_name="resnet",
    model_version="3",
    state="ready",
    sequence=12,
    started_at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
    counters=Counters(
        requests={"success": 1200, "invalid_argument": 3},
        requests_by_protocol={"http": 1100, "grpc": 103},
        inferences=1500,
        batches=210,
    ),
    queue_depth=4,
    in_flight=9,
    process=ProcessStats(cpu_percent=143.0, cpu_seconds=812.4, rss_bytes=210763776),
    devices=(
        DeviceStats(
            index=0,
            name="NVIDIA H100",
            memory_used_bytes=1_200_000_000,
            memory_total_bytes=80_000_000_000,
            utilization_ratio=0.63,
        ),
    ),
    listen=Listen(http_port=41234, grpc_port=41235),
)

SNAPSHOT = GatewaySnapshot(
    gateway_id="host-123",
    started_at=1732700000.0,
    updated_at=1732700100.5,
    routing_table_version=17,
    deployments={
        "fraud": {
            "b": VariantStats(
                version=4,
                requests=120,
                responses={"200": 118, "503": 2},
                retries=1,
                latency_ms=LATENCY,
                shadow=ShadowStats(
                    sent=60,
                    dropped=1,
                    errors=2,
                    compared=57,
                    argmax_compared=60,
                    argmax_equal=59,
                    max_abs_diff_sum=0.12,
                    max_abs_diff_max=0.01,
                    latency_ms=LATENCY,
                    live_latency_ms=HistogramRecord((0.25, 0.5, 1.0), (1, 1, 1, 1)),
                ),
                busy_s=3.25,
                in_flight=3,
                held=2,
            )
        }
    },
)

GATEWAY_TABLE = GatewayTableRecord(
    gateway_id="gw-1", table_version=1732700000123, table_digest="ab" * 32, reported_at=1732700100.5
)

ACTIVATION = ActivationRequest(
    deployment="fraud", variant="canary", gateway_id="host-123", held=3, requested_at=1732700000.5
)
