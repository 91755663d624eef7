"""Shadow traffic through a real gateway, and the stats snapshot the platform reads from Redis."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import orjson
import pytest

from tests.support.gateway import (
    Client,
    applied,
    classifier,
    gateway,
    infer_body,
    metric,
    publish,
    routing_key,
    table,
    worker,
)
from tests.support.polling import wait_for

ROWS = 4
BODIES = [infer_body(ROWS, seed=i) for i in range(64)]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``live`` and ``twin`` serve the same model; ``other`` the same shapes with other weights.

    The shadows run at nice 19: on a shared 2-core box a shadow worker's own CPU would otherwise
    compete with the live worker's (in a deployment it has its own capacity); what these tests pin
    is that the gateway never makes a client wait for a shadow.
    """
    directory = tmp_path_factory.mktemp("shadow")
    same, other = classifier(directory / "same.onnx", seed=1), classifier(directory / "other.onnx", seed=2)
    with worker(same) as live, worker(same, nice=19) as twin, worker(other, nice=19) as different:
        yield SimpleNamespace(live=live, twin=twin, other=different)


def send(url: str, deployment: str, n: int) -> list[float]:
    """``n`` requests of ``ROWS`` rows, all answered 200; their latencies in seconds."""
    latencies = []
    with Client(url) as client:
        for i in range(n):
            body = BODIES[i % len(BODIES)]
            started = time.perf_counter()
            status, headers, _ = client.infer(deployment, body)
            latencies.append(time.perf_counter() - started)
            assert (status, headers["x-kiln-variant"]) == (200, "a")
    return latencies


def compared(url: str, deployment: str, variant: str = "s") -> float:
    return metric(url, "kiln_gateway_shadow_compared_total", deployment=deployment, variant=variant)


def test_an_identical_shadow_agrees_fully_and_the_stats_reach_redis_in_the_platform_format(
    workers: SimpleNamespace,
) -> None:
    from deployments.histograms import quantile_of
    from deployments.services.gateway_stats import shadow_summary, variant_stats
    from inference_worker.contracts.gateway_stats import parse_snapshot

    with routing_key() as (key, redis), gateway(key, "--gateway-id", "gw-test-1") as gw:
        publish(
            redis, key, table(1, {"fraud": [("a", 100, 0, [workers.live]), ("s", 0, 100, [workers.twin])]})
        )
        applied(gw.url, 1)
        send(gw.url, "fraud", 50)
        wait_for(lambda: compared(gw.url, "fraud") == 50)
        labels = {"deployment": "fraud", "variant": "s", "version": "1"}
        assert metric(gw.url, "kiln_gateway_shadow_requests_total", **labels) == 50
        assert metric(gw.url, "kiln_gateway_shadow_argmax_rows_total", **labels) == 50 * ROWS
        assert metric(gw.url, "kiln_gateway_shadow_argmax_agreements_total", **labels) == 50 * ROWS
        zero = metric(gw.url, "kiln_gateway_shadow_max_abs_diff_bucket", output="y", le="0.0", **labels)
        assert zero == 50
        assert metric(gw.url, "kiln_gateway_shadow_duration_seconds_count", **labels) == 50

        def snapshot() -> dict[str, object] | None:
            raw = redis.hget(f"{key}:stats", "gw-test-1")
            found = orjson.loads(raw) if raw else None
            shadow = found["deployments"]["fraud"]["variants"].get("s", {}).get("shadow", {}) if found else {}
            return found if shadow.get("compared") == 50 else None

        written = wait_for(snapshot, timeout=10)
        assert 0 < redis.ttl(f"{key}:stats") <= 300
    assert {"gateway_id", "started_at", "updated_at", "deployments"} <= set(written)
    assert written["started_at"] <= written["updated_at"]
    stats = variant_stats("fraud", [parse_snapshot(written)])
    assert (stats["a"].version, stats["a"].requests, stats["a"].responses) == (1, 50, {"200": 50})
    assert stats["a"].latency_ms.total == 50
    assert 0 < (quantile_of(stats["a"].latency_ms, 0.5) or 0) < 1000
    summary = shadow_summary(stats["s"])
    assert summary is not None
    assert (summary.sent, summary.compared, summary.errors, summary.dropped) == (50, 50, 0, 0)
    assert summary.argmax_agreement == 1.0
    assert summary.max_abs_diff == summary.mean_max_abs_diff == 0.0
    assert summary.latency_ms.total == summary.live_latency_ms.total == 50


def test_a_shadow_with_different_weights_shows_agreement_below_one(workers: SimpleNamespace) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        publish(
            redis, key, table(1, {"fraud": [("a", 100, 0, [workers.live]), ("s", 0, 100, [workers.other])]})
        )
        applied(gw.url, 1)
        send(gw.url, "fraud", 50)
        wait_for(lambda: compared(gw.url, "fraud") == 50)
        rows = metric(gw.url, "kiln_gateway_shadow_argmax_rows_total", deployment="fraud", variant="s")
        agreements = metric(gw.url, "kiln_gateway_shadow_argmax_agreements_total", deployment="fraud")
        assert rows == 50 * ROWS
        assert agreements < rows
        zero = metric(gw.url, "kiln_gateway_shadow_max_abs_diff_bucket", deployment="fraud", le="0.0")
        assert zero == 0
        assert metric(gw.url, "kiln_gateway_shadow_errors_total", deployment="fraud") == 0


def test_a_shadow_that_never_answers_drops_copies_and_never_delays_the_client(
    workers: SimpleNamespace,
) -> None:
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # connections complete in the kernel; nothing ever reads or answers
        silent = f"http://127.0.0.1:{hole.getsockname()[1]}"
        extra = ("--shadow-queue-size", "2", "--shadow-concurrency", "1", "--upstream-timeout-s", "3")
        with routing_key() as (key, redis), gateway(key, *extra) as gw:
            publish(redis, key, table(1, {"fraud": [("a", 100, 0, [workers.live]), ("s", 0, 100, [silent])]}))
            applied(gw.url, 1)
            started = time.monotonic()
            latencies = send(gw.url, "fraud", 40)
            assert time.monotonic() - started < 3  # no answer waited for the shadow's timeout
            assert max(latencies) < 1
            dropped = metric(gw.url, "kiln_gateway_shadow_dropped_total", deployment="fraud", variant="s")
            assert dropped >= 40 - 3  # one in flight, two queued
            wait_for(lambda: metric(gw.url, "kiln_gateway_shadow_errors_total", deployment="fraud") >= 1)


def test_a_shadow_at_100_percent_gets_every_answered_request_and_the_client_every_answer(
    workers: SimpleNamespace,
) -> None:
    # What a 100% shadow costs the client's latency is measured in bench/gateway_bench.py (`mirrored`),
    # not here: a timed assertion on this shared machine measures its other jobs.
    with routing_key() as (key, redis), gateway(key) as gw:
        deployments = {"mirrored": [("a", 100, 0, [workers.live]), ("s", 0, 100, [workers.twin])]}
        publish(redis, key, table(1, deployments))
        applied(gw.url, 1)
        offered = 300
        latencies = send(gw.url, "mirrored", offered)  # every answer 200, or send fails
        assert len(latencies) == offered

        def accounted() -> tuple[float, float, float] | None:
            done, dropped, errors = (
                metric(gw.url, f"kiln_gateway_shadow_{name}_total", deployment="mirrored")
                for name in ("compared", "dropped", "errors")
            )
            return (done, dropped, errors) if done + dropped + errors == offered else None

        done, dropped, errors = wait_for(accounted, timeout=30)
        assert errors == 0
        assert done >= offered / 4, (done, dropped)


def test_two_live_arms_that_shadow_each_other_get_copies_only_of_the_other_arms_requests(
    workers: SimpleNamespace,
) -> None:
    """A rollout measuring agreement: each arm is live and a shadow; nothing is copied to itself."""
    with routing_key() as (key, redis), gateway(key) as gw:
        arms = [("a", 50, 100, [workers.live]), ("b", 50, 100, [workers.twin])]
        publish(redis, key, table(1, {"fraud": arms}))
        applied(gw.url, 1)
        answered = {"a": 0, "b": 0}
        with Client(gw.url) as client:
            for i in range(40):
                status, headers, _ = client.infer("fraud", BODIES[i % len(BODIES)])
                assert status == 200
                answered[headers["x-kiln-variant"]] += 1
        wait_for(lambda: compared(gw.url, "fraud", "a") + compared(gw.url, "fraud", "b") == 40)
        assert compared(gw.url, "fraud", "b") == answered["a"]
        assert compared(gw.url, "fraud", "a") == answered["b"]
        assert min(answered.values()) > 0
