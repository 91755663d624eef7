"""gunicorn settings for `make run` and the images (`-c python:config.gunicorn_conf`).

Keep-alive, request-line limit, JSON answers for the requests gunicorn refuses itself, and prometheus
multiprocess clean-up.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util  # type: ignore[import-untyped]

# An idle keep-alive connection stays open longer than clients keep theirs in a pool (httpx: 5 s,
# browsers and load balancers: up to 60 s). With gunicorn's default of 2 s the server closed
# connections just as polling clients reused them, and they saw "server disconnected".
keepalive = 75

# gunicorn's largest bounded request line (its default is 4094). Longer query values than the API's
# own guard allows (config.query) then reach it and get its 400 naming the parameter.
limit_request_line = 8190

_CODES = {400: "invalid", 403: "permission_denied", 414: "uri_too_long", 431: "headers_too_large"}


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (a request line over the limit, a malformed request) in the API's error
    shape, ``{"message", "code", "extra"}``: they come before Django sees a path, and the README promises
    JSON errors on the API."""
    message = f"{reason}: {mesg}" if mesg else reason
    if status_int == 414:
        message += f" (a request line is limited to {limit_request_line} bytes)"
    body = json.dumps({"message": message, "code": _CODES.get(status_int, "error"), "extra": {}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


# Workers call util.write_error by its module attribute, for every refusal of theirs.
util.write_error = write_json_error


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges must leave the merged /metrics (its counters stay, as they should)."""
    import os

    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
