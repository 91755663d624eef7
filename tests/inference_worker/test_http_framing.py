"""HTTP/1.1 framing a hostile or unusual client sends, at the worker and through the gateway (both
serve with ``http_base``): pipelined requests by the hundred, a refused request behind a valid one,
``Expect: 100-continue`` behind a request in flight, ``Upgrade`` and ``CONNECT``, a chunked body's
trailers, hop-by-hop headers a ``Connection`` field names, and a refusal while the body still
arrives. Raw sockets: the bytes on the wire are what these tests are about.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from inference_worker import http_base
from inference_worker.config import Limits
from tests.support.gateway import (
    applied,
    classifier,
    gateway,
    infer_body,
    publish,
    routing_key,
    table,
    worker,
)
from tests.support.polling import wait_for
from tests.support.workers import RunningWorker, make_config, running

BODY = infer_body(rows=1, seed=0)
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
LAST = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (path, len(body), extra, body)


def exchange(port: int, *sends: bytes, timeout: float = 15.0) -> bytes:
    """Send each part (in order, one write each), read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for part in sends:
            sock.sendall(part)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    return received


def statuses(received: bytes) -> list[bytes]:
    """The status codes of the answers on the wire, in order (bodies here never hold 'HTTP/1.1 ')."""
    return [part[:3] for part in received.split(b"HTTP/1.1 ")[1:]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A worker serving ``clf`` and a gateway routing deployment ``fraud`` to it; the ports of both."""
    model = classifier(tmp_path_factory.mktemp("framing") / "clf.onnx", seed=1)
    with worker(model) as replica, routing_key() as (key, redis), gateway(key) as gw:
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [replica])]}))
        applied(gw.url, 1)
        yield SimpleNamespace(worker=replica.port, gateway=gw.port, replica=replica, gw=gw)


PATHS = {"worker": b"/v2/models/clf/infer", "gateway": b"/v2/models/fraud/infer"}


@pytest.mark.parametrize("where", ["worker", "gateway"])
def test_hundreds_of_pipelined_requests_behind_one_in_flight_are_all_answered_in_order(
    served: SimpleNamespace, where: str
) -> None:
    received = exchange(getattr(served, where), post(PATHS[where], BODY) + LIVE * 600 + LAST)

    assert statuses(received) == [b"200"] * 602
    assert received.split(b"HTTP/1.1 ")[1].count(b'"outputs"') == 1  # the infer's answer came first
    assert "RecursionError" not in served.replica.log() + served.gw.log()


@pytest.mark.parametrize("where", ["worker", "gateway"])
@pytest.mark.parametrize(
    ("refused", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"POST /v2/models/x/infer HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", b"413"),
        (b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    ],
    ids=["malformed", "body-over-the-limit", "headers-over-the-limit"],
)
def test_a_refused_request_behind_valid_ones_is_answered_after_them_then_the_connection_closes(
    served: SimpleNamespace, where: str, refused: bytes, status: bytes
) -> None:
    received = exchange(getattr(served, where), post(PATHS[where], BODY) + LIVE + refused + LIVE)

    assert statuses(received) == [b"200", b"200", status]  # nothing after the refusal is read
    assert received.rstrip().endswith(b"}")  # the refusal's JSON, then the close


@pytest.mark.parametrize("where", ["worker", "gateway"])
def test_a_100_continue_waits_for_the_answer_to_the_request_before_it(
    served: SimpleNamespace, where: str
) -> None:
    head = b"POST %s HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", getattr(served, where)), timeout=15) as sock:
        sock.sendall(post(PATHS[where], BODY) + head % (PATHS[where], len(BODY)))
        received = b""
        while received.count(b"HTTP/1.1 ") < 2:
            received += sock.recv(65536)
        assert statuses(received) == [b"200", b"100"]  # the infer in flight is answered first
        sock.sendall(BODY)
        while received.count(b"HTTP/1.1 ") < 3 or not received.endswith(b"}"):
            received += sock.recv(65536)
    assert statuses(received) == [b"200", b"100", b"200"]


@pytest.mark.parametrize("where", ["worker", "gateway"])
def test_a_body_sent_without_waiting_for_its_100_gets_no_100_after_its_answer(
    served: SimpleNamespace, where: str
) -> None:
    expecting = post(PATHS[where], BODY, b"Expect: 100-continue\r\n")
    with socket.create_connection(("127.0.0.1", getattr(served, where)), timeout=15) as sock:
        sock.sendall(post(PATHS[where], BODY) + expecting)
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"}"):
            received += sock.recv(65536)
        sock.sendall(LAST)
        while chunk := sock.recv(65536):
            received += chunk

    assert statuses(received) == [b"200", b"200", b"200"]  # no 100 after the answer it was for


@pytest.mark.parametrize("where", ["worker", "gateway"])
def test_upgrade_and_connect_get_one_400_and_run_nothing(served: SimpleNamespace, where: str) -> None:
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
    connect = b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"

    for raw in (post(PATHS[where], BODY, upgrade), connect, live):
        received = exchange(getattr(served, where), raw)
        assert statuses(received) == [b"400"], received
        assert b"protocol upgrades (Upgrade, CONNECT) are not supported" in received


@pytest.mark.parametrize("where", ["worker", "gateway"])
def test_a_chunked_bodys_trailers_change_nothing(served: SimpleNamespace, where: str) -> None:
    chunked = b"%x\r\n%s\r\n0\r\n" % (len(BODY), BODY)
    trailers = b"Inference-Header-Content-Length: 10\r\nContent-Encoding: gzip\r\n\r\n"
    head = b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"

    received = exchange(getattr(served, where), head % PATHS[where] + chunked + trailers)

    assert statuses(received) == [b"200"], received
    assert b'"outputs"' in received


class Recording(http.server.BaseHTTPRequestHandler):
    """A replica that answers every infer with 200 and keeps the headers it was sent."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Recording.seen.append({name.lower(): value for name, value in self.headers.items()})
        body = b'{"model_name": "clf", "outputs": []}'
        self.send_response(200)
        for name, value in (("Connection", "X-Secret"), ("X-Secret", "upstream"), ("X-Kept", "yes")):
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A gateway routing ``fraud`` to a recording replica."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recording.seen = []
    try:
        with routing_key() as (key, redis), gateway(key) as gw:
            replica = f"http://127.0.0.1:{server.server_address[1]}"
            publish(redis, key, table(1, {"fraud": [("a", 100, 0, [replica])]}))
            applied(gw.url, 1)
            yield SimpleNamespace(port=gw.port, seen=Recording.seen)
    finally:
        server.shutdown()
        server.server_close()


def test_the_gateway_passes_on_no_hop_by_hop_header_a_connection_field_names(
    recorded: SimpleNamespace,
) -> None:
    extra = b"Connection: keep-alive, X-Hop\r\nX-Hop: client-secret\r\nX-End-To-End: kept\r\n"
    received = exchange(recorded.port, post(PATHS["gateway"], BODY, extra + b"Connection: close\r\n"))

    assert statuses(received) == [b"200"]
    (seen,) = recorded.seen
    assert seen["x-end-to-end"] == "kept"
    assert "x-hop" not in seen
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-kept: yes" in head
    assert b"x-secret" not in head


def test_trailers_are_not_passed_on_by_the_gateway(recorded: SimpleNamespace) -> None:
    head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    head += b"Connection: close\r\n\r\n"
    chunked = b"%x\r\n%s\r\n0\r\nX-Routing-Key: other\r\nX-Trailer: sneaked\r\n\r\n" % (len(BODY), BODY)

    received = exchange(recorded.port, head + chunked)

    assert statuses(received) == [b"200"]
    (seen,) = recorded.seen
    assert "x-trailer" not in seen
    assert "x-routing-key" not in seen


def test_a_body_refused_while_it_arrives_still_reads_the_refusal(models: SimpleNamespace) -> None:
    """Closing on unread data resets the connection: the client would lose the 413 (tritonclient
    sends the whole body before it reads)."""
    body = orjson.dumps({"inputs": [{"name": "x", "data": [0.5] * 400_000}]})
    with running(make_config(models.mlp, limits=Limits(max_body_bytes=4096))) as running_worker:
        port = _port(running_worker)
        received = exchange(port, post(b"/v2/models/mlp/infer", body))
    assert statuses(received) == [b"413"]
    assert b"exceeds the limit of 4096 bytes" in received


def _port(handle: RunningWorker) -> int:
    return handle.worker.http_port


def test_a_client_that_never_reads_the_refusal_owed_to_it_is_dropped(
    models: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers it does not read fill the server's buffer (writing pauses); a refused request behind
    them waits for that buffer: the sweep drops the connection after the read timeout."""
    monkeypatch.setattr(http_base, "READ_TIMEOUT_S", 0.5)
    with (
        running(make_config(models.mlp)) as handle,
        socket.create_connection(("127.0.0.1", _port(handle))) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        metrics = b"GET /metrics HTTP/1.1\r\n\r\n"  # 13 KB answers: 1,000 fill any socket buffer
        sock.sendall(metrics * 1_000 + b"GARBAGE\r\n\r\n")  # one read: the refusal comes after them
        connections = handle.worker._http.connections
        wait_for(lambda: not connections, timeout=20, message="the sweep dropping the connection")
