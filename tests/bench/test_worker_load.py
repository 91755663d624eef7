"""bench/worker_load.py reads h2load's rate over its measured window, not over its warm-up too."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from worker_load import h2load_http

pytestmark = pytest.mark.skipif(
    shutil.which("h2load") is None, reason="needs h2load (Debian: nghttp2-client)"
)


class Answers(BaseHTTPRequestHandler):
    """Answers every POST with a small JSON body, slowly enough that a run's count is predictable."""

    protocol_version = "HTTP/1.1"
    counted = 0
    gets = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with Answers.lock:
            Answers.gets += 1
        self.do_POST()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Answers.lock:
            Answers.counted += 1
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/infer"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_rate_is_the_measured_requests_over_the_measured_seconds_not_the_warm_up_too(server: str) -> None:
    Answers.counted = 0
    result = h2load_http(server, b"{}", 2, 2.0)

    assert result.errors == 0
    assert result.requests > 0
    # h2load measures 2 s after a 1 s warm-up: the rate's window is the 2 s, not the 3 s of the run
    assert 1.8 <= result.seconds <= 2.3, result.seconds
    # every request the server answered falls in the run; the measured ones are what the 2 s held
    assert result.requests < Answers.counted


def test_counters_are_read_around_the_measured_window_only(server: str) -> None:
    Answers.counted = 0
    result = h2load_http(server, b"{}", 2, 2.0, counter=lambda: (float(Answers.counted),))

    # what the server answered from the window's start to the end is what h2load measured (the
    # warm-up's requests are not in it): CPU per request divides like-for-like
    (answered,) = result.counted
    assert answered < Answers.counted
    assert 0.85 * result.requests <= answered <= 1.15 * result.requests, (answered, result.requests)


def test_a_request_without_a_body_is_a_get(server: str) -> None:
    Answers.counted = Answers.gets = 0
    result = h2load_http(server, b"", 1, 1.0)

    assert result.requests > 0
    assert result.errors == 0
    assert Answers.gets == Answers.counted  # every request h2load sent was a GET
