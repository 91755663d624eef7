"""The gateway in front of real workers, following a real Redis: routes, splits, sticky keys, failures.

Each test has its own routing key (Redis db 15) and gateway process; the
workers (``python -m inference_worker serve``) are shared by the module.
"""

from __future__ import annotations

import http.server
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY

import orjson
import pytest

from inference_worker.gateway import identity
from tests.support.gateway import (
    Arm,
    Client,
    applied,
    classifier,
    gateway,
    get,
    infer_body,
    metric,
    publish,
    routing_key,
    table,
    worker,
)
from tests.support.polling import wait_for

BODY = infer_body(rows=2, seed=0)


@pytest.fixture(scope="module")
def clf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classifier(tmp_path_factory.mktemp("gateway") / "clf.onnx", seed=1)


@pytest.fixture(scope="module")
def workers(clf: Path) -> Iterator[SimpleNamespace]:
    """Two workers serving the same model."""
    with worker(clf) as w1, worker(clf) as w2:
        yield SimpleNamespace(w1=w1, w2=w2)


def variants_of(url: str, n: int, threads: int = 4, key: str | None = None) -> Counter[str]:
    """Send ``n`` requests through ``threads`` clients; count the variant of each 200 answer."""

    def run(count: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        with Client(url) as client:
            for _ in range(count):
                status, headers, _ = client.infer("fraud", BODY, key)
                seen[headers["x-kiln-variant"] if status == 200 else f"status {status}"] += 1
        return seen

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(run, [n // threads] * threads), Counter())


def test_every_answer_names_its_variant_and_model_version_and_the_path_names_its_model(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [workers.w1])]}, versions={"a": 7}))
        applied(gw.url, 1)
        with Client(gw.url) as client:
            status, headers, body = client.infer("fraud", BODY)
            assert status == 200
            assert (headers["x-kiln-variant"], headers["x-kiln-model-version"]) == ("a", "7")
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body)["model_name"] == "clf"  # /fraud/ became the variant's /clf/
            status, headers, body = client.post("/v1/models/fraud:predict", b'{"instances": [[1, 2, 3, 4]]}')
            assert (status, headers["x-kiln-variant"]) == (200, "a")
            assert len(orjson.loads(body)["predictions"][0]) == 3
        for path in ("/v2/models/fraud", "/v2/models/fraud/ready"):
            status, headers, body = get(gw.url, path)
            assert (status, headers["X-Kiln-Variant"], headers["X-Kiln-Model-Version"]) == (200, "a", "7")
        assert orjson.loads(get(gw.url, "/v2/models/fraud")[2])["outputs"][0]["name"] == "y"


def test_the_gateway_is_ready_once_a_table_is_loaded_and_an_unknown_deployment_is_a_404(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        assert get(gw.url, "/v2/health/live")[0] == 200
        assert get(gw.url, "/v2/health/ready")[0] == 503
        metadata = orjson.loads(get(gw.url, "/v2")[2])
        assert metadata == {"name": "kiln-gateway", "version": ANY, "extensions": list(identity.EXTENSIONS)}
        healthz = get(gw.url, "/healthz")
        assert (healthz[0], orjson.loads(healthz[2])) == (
            200,
            {"status": "ok", "routing_table_loaded": False},
        )
        with Client(gw.url) as client:
            status, _, body = client.infer("fraud", BODY)
            assert (status, orjson.loads(body)) == (503, {"error": "the gateway has no routing table yet"})
            publish(redis, key, table(1, {"fraud": [("a", 100, 0, [workers.w1])]}))
            applied(gw.url, 1)
            status, _, body = client.infer("nope", BODY)
            assert (status, orjson.loads(body)) == (404, {"error": "unknown deployment 'nope'"})
            assert client.post("/v2/models/fraud/explain", BODY)[0] == 404
        assert get(gw.url, "/v2/models/fraud/infer")[0] == 405
        assert get(gw.url, "/elsewhere")[0] == 404


def test_a_table_set_without_a_message_is_picked_up_by_the_periodic_reload(workers: SimpleNamespace) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [workers.w1])]}))
        applied(gw.url, 1)
        publish(redis, key, table(2, {"fraud": [("b", 100, 0, [workers.w2])]}), announce=False)
        applied(gw.url, 2, timeout=5)  # --reload-interval-s 0.5
        assert variants_of(gw.url, 20, threads=1) == Counter({"b": 20})


def test_a_90_10_split_lands_within_two_points_over_4000_requests(workers: SimpleNamespace) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 90, 0, [workers.w1]), ("b", 10, 0, [workers.w2])]}))
        applied(gw.url, 1)
        seen = variants_of(gw.url, 4_000)
        assert seen.total() == 4_000
        assert set(seen) == {"a", "b"}
        assert abs(seen["b"] / 4_000 - 0.10) <= 0.02


def test_sticky_keys_keep_their_variant_and_a_90_10_to_80_20_change_moves_only_the_keys_it_must(
    workers: SimpleNamespace,
) -> None:
    keys = [f"customer-{i}" for i in range(1_000)]
    with routing_key() as (key, redis), gateway(key) as gw:
        split = [("a", 90, 0, [workers.w1]), ("b", 10, 0, [workers.w2])]
        publish(redis, key, table(1, {"fraud": split}))
        applied(gw.url, 1)

        def assign(chunk: list[str]) -> dict[str, str]:
            with Client(gw.url) as client:
                return {k: client.infer("fraud", BODY, k)[1]["x-kiln-variant"] for k in chunk}

        def assign_all(order: list[str]) -> dict[str, str]:
            with ThreadPoolExecutor(4) as pool:
                return {
                    k: v
                    for part in pool.map(assign, [order[i::4] for i in range(4)])
                    for k, v in part.items()
                }

        first = assign_all(keys)
        assert assign_all(keys[::-1]) == first  # 1,000 more requests: every key kept its variant
        assert 0.05 < Counter(first.values())["b"] / 1_000 < 0.15
        publish(redis, key, table(2, {"fraud": [("a", 80, 0, [workers.w1]), ("b", 20, 0, [workers.w2])]}))
        applied(gw.url, 2)
        after = assign_all(keys)
    moved = [k for k in keys if after[k] != first[k]]
    assert all(first[k] == "a" and after[k] == "b" for k in moved)  # only toward the arm that grew
    assert 0.05 <= len(moved) / 1_000 <= 0.16  # about the 10% that must move


def test_a_split_changed_20_times_under_16_looping_clients_fails_nothing_and_stays_within_old_or_new(
    workers: SimpleNamespace,
) -> None:
    arms = {"a": [workers.w1], "b": [workers.w2], "c": [workers.w1, workers.w2]}
    cycle = [{"a": 100}, {"b": 100}, {"c": 100}, {"a": 50, "b": 50}, {"c": 70, "b": 30}]
    splits = list(itertools.islice(itertools.cycle(cycle), 21))

    def split_table(version: int) -> dict[str, object]:
        weights = splits[version]
        return table(version, {"fraud": [(n, weights.get(n, 0), 0, r) for n, r in arms.items()]})

    records: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        with Client(gw.url) as client:
            while not stop.is_set():
                sent = time.monotonic()
                status, headers, _ = client.infer("fraud", BODY)
                records.append((sent, time.monotonic(), status, headers.get("x-kiln-variant", "")))

    with routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, split_table(0))
        applied(gw.url, 0)
        published, seen_applied = [float("-inf")], [float("-inf")]
        threads = [threading.Thread(target=loop) for _ in range(16)]
        for thread in threads:
            thread.start()
        try:
            for version in range(1, 21):
                answered = len(records)  # some requests under each table before the next one
                wait_for(lambda n=answered: len(records) >= n + 20, timeout=30, interval=0.01)  # type: ignore[misc]
                published.append(time.monotonic())
                publish(redis, key, split_table(version))
                applied(gw.url, version)
                seen_applied.append(time.monotonic())
            answered = len(records)
            wait_for(lambda: len(records) >= answered + 20, timeout=30, interval=0.01)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    seen_applied.append(float("inf"))
    assert len(records) > 500
    assert Counter(status for _, _, status, _ in records) == Counter({200: len(records)})
    for sent, received, _, variant in records:
        # split k may have routed a request if it was published before the answer came back and
        # not yet replaced (split k+1 seen applied) when the request was sent
        possible = [k for k in range(21) if published[k] <= received and seen_applied[k + 1] >= sent]
        assert any(variant in splits[k] for k in possible), (variant, possible)


def test_a_killed_replica_s_requests_are_retried_on_another(clf: Path) -> None:
    with worker(clf) as victim, worker(clf) as survivor, routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [victim, survivor])]}))
        applied(gw.url, 1)
        statuses: Counter[int] = Counter()
        stop = threading.Event()

        def loop() -> None:
            with Client(gw.url) as client:
                while not stop.is_set():
                    statuses[client.infer("fraud", BODY)[0]] += 1

        threads = [threading.Thread(target=loop) for _ in range(8)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: statuses.total() > 300)
            victim.kill()  # SIGKILL: in-flight requests lose their connection
            done = statuses.total()
            wait_for(lambda: statuses.total() > done + 500)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert statuses == Counter({200: statuses.total()})
        assert metric(gw.url, "kiln_gateway_upstream_retries_total", deployment="fraud", variant="a") >= 1


def test_a_replica_answering_503_is_retried_on_another_once(workers: SimpleNamespace) -> None:
    class Draining(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"error": "the worker is draining"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Draining)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    draining = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with routing_key() as (key, redis), gateway(key) as gw:
            publish(redis, key, table(1, {"fraud": [("a", 100, 0, [draining, workers.w1])]}))
            applied(gw.url, 1)
            assert variants_of(gw.url, 40, threads=2) == Counter({"a": 40})
            assert metric(gw.url, "kiln_gateway_upstream_retries_total", deployment="fraud") >= 1
            publish(redis, key, table(2, {"fraud": [("a", 100, 0, [draining])]}))
            applied(gw.url, 2)
            with Client(gw.url) as client:  # nowhere else to go: the replica's 503 is the answer
                status, headers, body = client.infer("fraud", BODY)
            assert (status, headers["x-kiln-variant"], body) == (
                503,
                "a",
                b'{"error": "the worker is draining"}',
            )
    finally:
        server.shutdown()
        server.server_close()


def test_a_variant_without_a_reachable_replica_answers_503_with_a_message(workers: SimpleNamespace) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there
    with routing_key() as (key, redis), gateway(key) as gw:
        deployments: dict[str, list[Arm]] = {
            "empty": [("a", 100, 0, [])],
            "gone": [("a", 100, 0, [closed])],
            "off": [("a", 0, 0, [workers.w1])],
        }
        publish(redis, key, table(1, deployments))
        applied(gw.url, 1)
        with Client(gw.url) as client:
            status, headers, body = client.infer("empty", BODY)
            assert (status, headers["x-kiln-variant"]) == (503, "a")
            assert orjson.loads(body) == {"error": "no ready replica of deployment 'empty' variant 'a'"}
            status, headers, body = client.infer("gone", BODY)
            assert (status, headers["x-kiln-variant"]) == (503, "a")
            message = orjson.loads(body)["error"]
            assert message.startswith("no replica of deployment 'gone' variant 'a' could be reached (last: ")
            assert closed in message
            status, _, body = client.infer("off", BODY)
            assert (status, orjson.loads(body)) == (
                503,
                {"error": "deployment 'off' has no variant with traffic weight"},
            )


def test_metrics_count_requests_answers_and_latency_per_deployment_variant_and_version(
    workers: SimpleNamespace,
) -> None:
    with routing_key() as (key, redis), gateway(key) as gw:
        deployments = {"fraud": [("a", 50, 0, [workers.w1]), ("b", 50, 0, [workers.w2])]}
        publish(redis, key, table(1, deployments, versions={"a": 3, "b": 4}))
        applied(gw.url, 1)
        seen = variants_of(gw.url, 40, threads=2)
        with Client(gw.url) as client:
            assert client.post("/v2/models/fraud/infer", b"{not json")[0] == 400
        for name, version in (("a", "3"), ("b", "4")):
            labels = {"deployment": "fraud", "variant": name, "version": version}
            requests = metric(gw.url, "kiln_gateway_requests_total", **labels)
            assert requests >= seen[name]
            assert metric(gw.url, "kiln_gateway_responses_total", code="200", **labels) == seen[name]
            assert metric(gw.url, "kiln_gateway_request_duration_seconds_count", **labels) == requests
        assert metric(gw.url, "kiln_gateway_responses_total", deployment="fraud", code="400") == 1
        assert metric(gw.url, "kiln_gateway_routing_table_version") == 1


def test_a_replica_past_the_upstream_timeout_is_a_504_and_a_body_past_the_limit_a_413() -> None:
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)  # accepts in the kernel, never answers
        silent = f"http://127.0.0.1:{hole.getsockname()[1]}"
        extra = ("--upstream-timeout-s", "0.5", "--max-body-bytes", "2048")
        with routing_key() as (key, redis), gateway(key, *extra) as gw:
            publish(redis, key, table(1, {"fraud": [("a", 100, 0, [silent])]}))
            applied(gw.url, 1)
            with Client(gw.url) as client:
                started = time.monotonic()
                status, headers, body = client.infer("fraud", BODY)
                assert (status, headers["x-kiln-variant"]) == (504, "a")
                assert orjson.loads(body) == {"error": f"{silent} did not answer within 0.5 s"}
                assert time.monotonic() - started < 3
            with Client(gw.url) as client:
                status, _, body = client.infer("fraud", b" " * 4096)
                assert status == 413
                assert "exceeds the limit of 2048 bytes" in orjson.loads(body)["error"]


def test_a_gateway_without_redis_stays_live_and_not_ready_and_stops_cleanly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"redis://127.0.0.1:{probe.getsockname()[1]}/15"  # nothing listens there
    with gateway("kiln-test:unreachable:routing", "--redis-url", nowhere) as gw:
        assert get(gw.url, "/v2/health/live")[0] == 200
        status, _, body = get(gw.url, "/v2/health/ready")
        assert (status, orjson.loads(body)["ready"]) == (503, False)
        wait_for(lambda: metric(gw.url, "kiln_gateway_routing_reloads_total", result="failed") >= 1)
        wait_for(lambda: "cannot read the routing table" in gw.log())
