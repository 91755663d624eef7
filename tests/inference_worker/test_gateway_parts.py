"""The gateway's parts without processes: its command line, shadow comparison, frames, metrics."""

from __future__ import annotations

import os

import numpy as np
import orjson
import pytest

from inference_worker.cli import build_parser, main
from inference_worker.gateway.config import config_from_args, gateway_options
from inference_worker.gateway.metrics import GatewayMetrics, apply_shadow_state, shadow_state
from inference_worker.gateway.proxy import UpstreamResponse
from inference_worker.gateway.shadow import (
    FrameReader,
    ShadowCopy,
    compare,
    decode_copy,
    decode_outputs,
    encode_copy,
)

JSON = b"Content-Type: application/json\r\n"


@pytest.fixture(autouse=True)
def _no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KILN_GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "http"], "--port (or KILN_GATEWAY_PORT): invalid value 'http'"),
        (["--port", "70000"], "--port: must be between 0 and 65535"),
        (["--redis-url", "http://x"], "--redis-url: expected a redis://"),
        (["--reload-interval-s", "0"], "--reload-interval-s: must be between 0.05 and 3600"),
        (["--routing-key-header", "X Key"], "--routing-key-header: must be an HTTP header name"),
        (["--shadow-queue-size", "0"], "--shadow-queue-size: must be between 1 and 1000000"),
        (["--shadow-concurrency", "many"], "--shadow-concurrency (or KILN_GATEWAY_SHADOW_CONCURRENCY)"),
        (
            ["--upstream-timeout-s", "nan"],
            "--upstream-timeout-s (or KILN_GATEWAY_UPSTREAM_TIMEOUT_S): invalid",
        ),
        (["--gateway-id", "a b"], "--gateway-id: must be 1-128"),
        (["--max-body-bytes", "10"], "--max-body-bytes: must be between 1 KiB and 4 GiB"),
        (["--log-level", "loud"], "--log-level: 'loud' is not debug, info, warning or error"),
    ],
)
def test_a_bad_gateway_option_exits_2_with_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["gateway", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("inference-worker: error: ")
    assert message in err


def test_a_bad_gateway_variable_exits_2_naming_the_flag_and_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_GATEWAY_STATS_INTERVAL_S", "often")
    assert main(["gateway"]) == 2
    assert (
        "--stats-interval-s (or KILN_GATEWAY_STATS_INTERVAL_S): invalid value 'often'"
        in capsys.readouterr().err
    )


def test_gateway_options_come_from_flags_then_environment_then_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KILN_GATEWAY_ROUTING_KEY", "prod:routing")
    monkeypatch.setenv("KILN_GATEWAY_PORT", "9000")
    config = config_from_args(build_parser().parse_args(["gateway", "--port", "9100"]))
    assert (config.port, config.routing_key, config.host) == (9100, "prod:routing", "127.0.0.1")
    assert (config.reload_interval_s, config.routing_key_header, config.shadow_queue_size) == (
        5,
        "X-Routing-Key",
        256,
    )
    assert (config.shadow_concurrency, config.stats_interval_s, config.upstream_timeout_s) == (8, 1, 30)
    assert config.gateway_id.endswith(f"-{os.getpid()}")
    assert {option.env for option in gateway_options()} >= {
        "KILN_GATEWAY_REDIS_URL",
        "KILN_GATEWAY_MAX_BODY_BYTES",
    }


def v2(outputs: dict[str, np.ndarray], binary: bool = False) -> UpstreamResponse:
    items, chunks = [], []
    for name, array in outputs.items():
        item: dict[str, object] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            item["parameters"] = {"binary_data_size": array.nbytes}
            chunks.append(array.astype("<f4").tobytes())
        else:
            item["data"] = array.reshape(-1).tolist()
        items.append(item)
    head = orjson.dumps({"model_name": "m", "outputs": items})
    if not binary:
        return UpstreamResponse(200, JSON, head)
    headers = b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\n" % len(head)
    return UpstreamResponse(200, headers, head + b"".join(chunks))


def test_outputs_decode_from_json_binary_and_v1_answers() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    z = np.array([0.5, -1.5], dtype=np.float32)
    for binary in (False, True):
        decoded = decode_outputs(v2({"y": y, "z": z}, binary=binary))
        np.testing.assert_array_equal(decoded["y"], y)
        np.testing.assert_array_equal(decoded["z"], z)
    v1 = decode_outputs(UpstreamResponse(200, JSON, b'{"predictions": [[1, 2], [3, 4]]}'))
    np.testing.assert_array_equal(v1["predictions"], [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="compressed"):
        decode_outputs(UpstreamResponse(200, b"Content-Encoding: gzip\r\n", b"..."))


def test_compare_gives_the_max_abs_difference_per_output_and_argmax_agreement_per_row() -> None:
    live = {"y": np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32), "s": np.array([1.0, 2.0])}
    assert compare(live, live) == ({"y": 0.0, "s": 0.0}, 2, 2)
    shadow = {"y": np.array([[0.1, 0.7, 0.0], [0.1, 0.8, 0.1]], dtype=np.float32), "s": np.array([1.0, 2.5])}
    diffs, rows, equal = compare(live, shadow)
    assert diffs["y"] == pytest.approx(0.7)
    assert diffs["s"] == pytest.approx(0.5)
    assert (rows, equal) == (2, 1)
    with pytest.raises(ValueError, match="shape"):
        compare(live, {"y": np.zeros((3, 3)), "s": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        compare(live, {"s": np.zeros(2)})
    with pytest.raises(ValueError, match="not finite"):
        compare({"s": np.array([1.0])}, {"s": np.array([np.nan])})
    strings = {"t": np.array(["a", "b"], dtype=object)}
    assert compare(strings, strings) == ({}, 0, 0)


def test_a_copy_survives_its_frame_even_when_the_stream_arrives_byte_by_byte() -> None:
    live = UpstreamResponse(200, JSON, b'{"outputs": []}')
    copy = ShadowCopy(
        "fraud", "next", "4", [("127.0.0.1", 40001, "4")], b"POST", b"/v2/models/fraud/infer",
        b"Content-Type: application/json\r\n", b'{"inputs": []}', live, 0.0012,
    )  # fmt: skip
    stream = encode_copy(copy) * 3
    reader = FrameReader()
    frames = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]
    assert len(frames) == 3
    assert all(decode_copy(header, payload) == copy for header, payload in frames)


def test_the_snapshot_adds_a_variant_s_versions_and_labels_it_with_the_newest() -> None:
    metrics = GatewayMetrics()
    metrics.series("fraud", "a", "3").answered(200, 0.002)
    metrics.series("fraud", "a", "4").answered(503, 0.0001)
    metrics.series("fraud", "a", "4").retries += 1
    snapshot = metrics.snapshot("gw-1", started_at=100.0)
    entry = snapshot.deployments["fraud"]["a"]
    assert (entry.version, entry.requests, entry.responses, entry.retries) == (4, 2, {"200": 1, "503": 1}, 1)
    assert entry.latency_ms.le[:3] == (0.1, 0.25, 0.5)
    assert entry.latency_ms.total == 2
    assert (snapshot.gateway_id, snapshot.started_at) == ("gw-1", 100.0)


def test_the_shadow_process_state_replaces_the_gateway_s_shadow_counters() -> None:
    child, parent = GatewayMetrics(), GatewayMetrics()
    series = child.series("fraud", "next", "4")
    series.shadow_sent = 3
    series.shadow_latency.observe(0.004)
    series.shadow_live_latency.observe(0.003)
    series.compared({"y": 0.25}, rows=4, equal=3)
    parent.series("fraud", "next", "4").shadow_dropped = 2
    apply_shadow_state(parent.series("fraud", "next", "4"), orjson.loads(orjson.dumps(shadow_state(series))))
    shadow = parent.snapshot("gw", 0.0).deployments["fraud"]["next"].shadow
    assert (shadow.sent, shadow.dropped, shadow.compared, shadow.argmax_compared, shadow.argmax_equal) == (
        3,
        2,
        1,
        4,
        3,
    )
    assert (shadow.max_abs_diff_sum, shadow.max_abs_diff_max) == (0.25, 0.25)
    assert shadow.latency_ms.total == shadow.live_latency_ms.total == 1
    text = parent.render(parent.registry()).decode()
    labels = 'output="y",variant="next",version="4"'
    assert f'kiln_gateway_shadow_max_abs_diff_bucket{{deployment="fraud",le="0.1",{labels}}} 0.0' in text
    assert f'kiln_gateway_shadow_max_abs_diff_bucket{{deployment="fraud",le="1.0",{labels}}} 1.0' in text
    assert 'kiln_gateway_shadow_dropped_total{deployment="fraud",variant="next",version="4"} 2.0' in text
