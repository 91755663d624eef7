"""gunicorn settings for `make run` and the images (`-c python:config.gunicorn_conf`).

Keep-alive and prometheus multiprocess clean-up.
"""

from __future__ import annotations

from typing import Any

# An idle keep-alive connection stays open longer than clients keep theirs in a pool (httpx: 5 s,
# browsers and load balancers: up to 60 s). With gunicorn's default of 2 s the server closed
# connections just as polling clients reused them, and they saw "server disconnected".
keepalive = 75


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges must leave the merged /metrics (its counters stay, as they should)."""
    import os

    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
