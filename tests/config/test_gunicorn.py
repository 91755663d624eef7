"""What gunicorn itself answers, before Django sees a request: the API's JSON error shape."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest

from tests.support.gunicorn import gunicorn
from tests.support.services import database_url_for_children

pytestmark = pytest.mark.slow


def test_a_request_line_over_gunicorns_limit_gets_a_json_414_and_a_long_value_under_it_the_guard_s_400(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url_for_children()}
    with gunicorn(tmp_path / "gunicorn.log", env, workers=1) as url:
        too_long = httpx.get(f"{url}/api/v1/models/", params={"search": "x" * 9000}, timeout=10)
        assert too_long.status_code == 414
        assert too_long.headers["content-type"] == "application/json"
        body = too_long.json()
        assert body["code"] == "uri_too_long"
        assert "8190 bytes" in body["message"]

        # 5,000 characters: over the old 4 KB line limit, under the new one, so the guard names the field
        long_value = httpx.get(f"{url}/api/v1/models/", params={"search": "y" * 5000}, timeout=10)
        assert long_value.status_code == 400
        assert long_value.json()["message"].startswith("search: longer than 1024 characters")

        # a header name with a space: no client library sends it, so the bytes go out by hand
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX Bad: 1\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"Content-Type: application/json" in head
        assert json.loads(body)["code"] == "invalid"
