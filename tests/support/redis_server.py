"""A private ``redis-server`` that a test can really stop and start again, and the broker pointed at it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from kombu import pools

from deployments.backends.ports import free_port
from tests.support.polling import wait_for


class RedisServer:
    """``redis-server`` on a port of its own, keeping its data in ``directory`` across restarts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",  # it comes back with its data, as the compose stack's does
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, timeout=20, message=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@contextmanager
def broker_at(url: str) -> Iterator[None]:
    """This process's Celery app sends to ``url`` (the connection pools made for the old one dropped)."""
    from config.celery_app import app

    def reset() -> None:
        # app.pool is kombu's process-wide pool for the URL: closing it alone would leave a closed pool
        # that the next send to the same URL gets back ("Acquire on closed pool"); reset drops them all.
        pools.reset()  # type: ignore[no-untyped-call]
        app._pool = None
        app.amqp._producer_pool = None

    # Only the override is undone: the URL underneath is read from Django's settings, which a test may
    # have pointed at the same server first (and its settings fixture puts back on its own).
    had, before = "broker_url" in app.conf.changes, app.conf.changes.get("broker_url")
    app.conf.broker_url = url
    reset()
    try:
        yield
    finally:
        if had:
            app.conf.broker_url = before
        else:
            app.conf.changes.pop("broker_url", None)
        reset()
