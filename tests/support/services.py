"""The platform's own processes, started for real by tests: Celery worker and beat, the gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from tests.support.paths import ROOT
from tests.support.polling import wait_for


def database_url_for_children() -> str:
    """The DATABASE_URL of the database pytest-django created, for child processes."""
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class Service:
    """A real subprocess of the platform (its own session, its output in a log file)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the whole process group (a Celery worker's pool children included)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class CeleryWorker(Service):
    """A real ``celery worker`` bound to the test database and the session's private queues."""

    def argv(self) -> list[str]:
        queue = self.env["KILN_CELERY_QUEUE"]
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            f"{queue},{queue}.long",
            "-c",
            "2",
            "-l",
            "info",
            "-n",
            f"test-{os.getpid()}-{time.monotonic_ns()}@localhost",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]


class CeleryBeat(Service):
    """A real ``celery beat`` sending the periodic tasks to the session's queues."""

    def argv(self) -> list[str]:
        schedule = self.log_path.parent / "beat-schedule"
        return [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info", "-s", str(schedule)]


class Gateway(Service):
    """A real ``inference_worker gateway`` serving the test's routing table."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        from deployments.backends.ports import free_port

        super().__init__(env, log_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port()
        self.grpc = f"127.0.0.1:{self.grpc_port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "inference_worker",
            "gateway",
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            "--redis-url",
            self.env["REDIS_URL"],
            "--routing-key",
            self.env["KILN_ROUTING_KEY"],
            "--reload-interval-s",
            "1",
        ]

    def start(self) -> None:
        import httpx

        super().start()

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/v2/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=30, message="the gateway to answer")


class Platform:
    """The control plane as it runs in production, on the test database: web, Celery worker, beat, gateway."""

    def __init__(self, url: str, worker: CeleryWorker, beat: CeleryBeat, gateway: Gateway) -> None:
        self.url = url
        self.worker = worker
        self.beat = beat
        self.gateway = gateway

    def restart(self) -> None:
        """Kill the Celery worker and beat outright and start new ones (a platform restart)."""
        self.beat.stop()
        self.worker.kill()
        self.worker.start()
        self.beat.start()


def stop_workers_of(instance: str) -> None:
    """SIGKILL every worker process a test's platform (``instance``) started."""
    marker = f"KILN_MANAGED_BY={instance}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.killpg(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def wait_until_the_database_is_quiet(timeout: float = 30) -> None:
    """Wait until no other session of the test database runs a statement or holds a transaction.

    A worker killed mid-report leaves its request running in the live server's thread; the test
    database's flush (one TRUNCATE of every table) racing that request's transaction can deadlock,
    and Postgres may then cancel the flush, leaving the rows for the next test.
    """
    from django.db import connection

    def quiet() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')"
            )
            row = cursor.fetchone()
        return row is not None and row[0] == 0

    wait_for(quiet, timeout=timeout, message="the test database's other sessions to finish")
