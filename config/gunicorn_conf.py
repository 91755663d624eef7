"""gunicorn settings for `make run` (`-c python:config.gunicorn_conf`): prometheus multiprocess clean-up."""

from __future__ import annotations

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges must leave the merged /metrics (its counters stay, as they should)."""
    import os

    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
