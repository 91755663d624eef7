"""``manage.py runstack``: the whole platform on one machine (what `make run` starts).

Migrates, collects static files, creates an admin user when there is none, then
runs the web server (gunicorn), a Celery worker per queue, Celery beat and the
gateway as child processes. A component that dies is started again with backoff
(``deployments.management.supervisor``); Ctrl-C stops them all together.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from deployments.management.supervisor import Component, Supervisor


class Command(BaseCommand):
    help = "Run web, Celery worker and beat, and the gateway on this machine."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("KILN_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("KILN_PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument(
            "--task-log-level",
            default=os.environ.get("KILN_RUN_TASK_LOG_LEVEL", "warning"),
            choices=["debug", "info", "warning", "error"],
            help="Celery worker and beat on this console (info: every task and schedule tick)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)  # SQLite's file, logs, the beat schedule
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        login = self._ensure_admin()
        from deployments.services import publish_routing_table

        publish_routing_table()  # the gateway starts from the current table
        # Workers report to the web app where it listens now (--port / KILN_PORT), unless an operator
        # named another address; the Celery workers that launch them inherit this environment.
        public = os.environ.setdefault("KILN_PUBLIC_URL", local_url(options["host"], options["port"]))
        log_dir = Path(settings.VAR_DIR) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        supervisor = Supervisor(
            self._components({**options, "access_log": log_dir / "web-access.log"}), say=self._say
        )
        supervisor.start_all()
        url = f"http://{options['host']}:{options['port']}/"
        self.stdout.write(self.style.SUCCESS(f"\nKiln is running at {url}"))
        self.stdout.write(f"  log in: {login}")
        self.stdout.write(f"  API docs: {url}api/docs/   admin: {url}admin/   metrics: {url}metrics")
        self.stdout.write(f"  endpoints (gateway): {settings.KILN_GATEWAY_URL}/v2/models/<deployment>/infer")
        self.stdout.write(f"  workers report to: {public}")
        if settings.KILN_GATEWAY_GRPC_TARGET:
            self.stdout.write(
                f"  gRPC (gateway): {settings.KILN_GATEWAY_GRPC_TARGET}, model name = deployment"
            )
        self.stdout.write(
            f"  database: {str(settings.DATABASES['default']['ENGINE']).rsplit('.', 1)[-1]}"
            f"  broker: {settings.CELERY_BROKER_URL}"
        )
        self.stdout.write(
            f"  web requests: {log_dir / 'web-access.log'}   Celery here at {options['task_log_level']}"
            " (--task-log-level info, or KILN_RUN_TASK_LOG_LEVEL=info, for every task)"
        )
        self.stdout.write("  A component that dies is restarted; Ctrl-C stops everything.\n")
        self._supervise(supervisor)

    def _say(self, line: str) -> None:
        self.stdout.write(f"{time.strftime('%H:%M:%S')} {line}")
        self.stdout.flush()

    def _ensure_admin(self) -> str:
        users = get_user_model()
        password_file = Path(settings.VAR_DIR) / "admin-password.txt"
        if users.objects.filter(is_superuser=True).exists():
            if password_file.exists():
                return f"admin / {password_file.read_text().strip()}  (from {password_file})"
            return "an existing superuser (create another with `python manage.py createsuperuser`)"
        password = os.environ.get("KILN_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.objects.create_superuser("admin", "admin@localhost", password)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        return f"admin / {password}  (saved in {password_file})"

    def _components(self, options: dict[str, Any]) -> list[Component]:
        python = sys.executable
        bin_dir = Path(python).parent
        queue = settings.CELERY_TASK_DEFAULT_QUEUE
        commands: dict[str, list[str]] = {
            "web": [
                str(bin_dir / "gunicorn"),
                "config.wsgi",
                "--bind",
                f"{options['host']}:{options['port']}",
                "--workers",
                str(options["web_workers"]),
                "--threads",
                "4",
                "--timeout",
                "300",
                "--access-logfile",
                str(options["access_log"]),
                # prometheus_client multiprocess clean-up when a gunicorn worker exits
                "--config",
                "python:config.gunicorn_conf",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queue,
                "-c",
                "2",
                "-n",
                f"short@{os.uname().nodename}",
                "-l",
                options["task_log_level"],
            ],
            "worker-long": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                settings.KILN_CELERY_LONG_QUEUE,
                "-c",
                "1",
                "-n",
                f"long@{os.uname().nodename}",
                "-l",
                options["task_log_level"],
            ],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "-l",
                options["task_log_level"],
                "-s",
                settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        }
        commands["gateway"] = [
            python,
            "-m",
            "inference_worker",
            "gateway",
            "--host",
            settings.KILN_GATEWAY_HOST,
            "--port",
            str(settings.KILN_GATEWAY_PORT),
            "--grpc-port",
            str(settings.KILN_GATEWAY_GRPC_PORT),
            "--redis-url",
            settings.REDIS_URL,
            "--routing-key",
            settings.KILN_ROUTING_KEY,
        ]
        web_env = prometheus_multiprocess_env(Path(settings.VAR_DIR))
        other_env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
        return [
            Component(name, argv, web_env if name == "web" else other_env, Path(settings.BASE_DIR))
            for name, argv in commands.items()
        ]

    def _supervise(self, supervisor: Supervisor) -> None:
        """Restart dead components until Ctrl-C (or SIGTERM); a crash loop stops everything."""
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        looping = supervisor.watch(lambda: stopping)
        supervisor.stop_all()
        self._stop_local_workers()
        sys.exit(0 if looping is None else 1)

    def _stop_local_workers(self) -> None:
        """Local worker processes stop with the platform (containers are the engine's and keep serving);
        they start again with it. A platform that is killed instead adopts them when it comes back."""
        from deployments.models import Worker, WorkerState
        from deployments.reconcile import stop_workers

        live = list(
            Worker.objects.filter(backend="process").exclude(
                state__in=(WorkerState.STOPPED, WorkerState.FAILED)
            )
        )
        stop_workers(live)
        if live:
            self.stdout.write(f"stopped {len(live)} local worker(s); they start with the platform")


def local_url(host: str, port: int) -> str:
    """The web app's URL on this machine (a wildcard bind is reached at the loopback address)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def prometheus_multiprocess_env(var_dir: Path) -> dict[str, str]:
    """The web server's environment: an empty ``PROMETHEUS_MULTIPROC_DIR`` shared by its workers.

    gunicorn runs several processes; in prometheus_client's multiprocess mode each
    writes its django-prometheus counters to files there and /metrics merges them.
    Its metric files are removed first: those of an earlier run would add old
    processes' counts to the new ones. Only the web server gets it: Celery's
    processes would otherwise add their own database queries to the web's.
    """
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or var_dir / "prometheus-multiproc")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # only prometheus_client's files, whatever else the path holds
        stale.unlink()
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
