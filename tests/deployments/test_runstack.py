"""``manage.py runstack`` (what ``make run`` starts) on a fresh data directory: up, answering, down on Ctrl-C.

It runs on SQLite in a temporary ``KILN_VAR_DIR`` (the embedded default when no database is
configured) and a Redis database of its own, so it shares nothing with the rest of the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from deployments.backends.ports import free_port
from tests.support.paths import ROOT
from tests.support.polling import wait_for

pytestmark = pytest.mark.slow


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_runstack_starts_the_platform_on_a_fresh_directory_and_ctrl_c_stops_all_of_it(tmp_path: Path) -> None:
    web_port, gateway_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE", "KILN_PUBLIC_URL")
    }
    env.update(
        KILN_VAR_DIR=str(tmp_path / "var"),
        SECRET_KEY="runstack-test-" + uuid.uuid4().hex,
        REDIS_URL="redis://127.0.0.1:6379/13",
        KILN_INSTANCE_ID=f"runstack-{uuid.uuid4().hex[:8]}",
        KILN_GATEWAY_PORT=str(gateway_port),
        KILN_GATEWAY_GRPC_PORT=str(free_port()),
    )
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--port", str(web_port), "--web-workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the finally block can end the whole stack, children and all
    )
    lines: list[str] = []
    output = proc.stdout
    assert output is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(output.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: any("Kiln is running at" in line for line in lines) or proc.poll() is not None,
            timeout=120,
            message="the banner",
        )
        assert proc.poll() is None, "".join(lines)[-3000:]
        banner = "".join(lines)
        assert f"http://127.0.0.1:{web_port}/" in banner
        # the workers it launches report to this port, not the default 8000
        assert f"workers report to: http://127.0.0.1:{web_port}\n" in banner
        assert "log in: admin / " in banner
        password_file = tmp_path / "var" / "admin-password.txt"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert password_file.read_text().strip() in banner

        wait_for(lambda: _answers(f"http://127.0.0.1:{web_port}/healthz"), timeout=60, message="the web app")
        wait_for(
            lambda: _answers(f"http://127.0.0.1:{gateway_port}/v2/health/ready"),
            timeout=60,
            message="the gateway with its routing table",
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10) as client:
            assert client.get("/api/v1/models/").status_code in (401, 403)  # auth everywhere but health
            login = client.get("/admin/login/")
            assert login.status_code == 200
        assert (tmp_path / "var" / "log" / "web-access.log").read_text().count("/healthz") >= 1
        assert (tmp_path / "var" / "db.sqlite3").exists()

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
        assert not _answers(f"http://127.0.0.1:{web_port}/healthz")
        assert not _answers(f"http://127.0.0.1:{gateway_port}/v2/health/live")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what it left running, if it failed
        proc.wait(timeout=30)
        reader.join(timeout=10)
        if not reader.is_alive():  # closing the pipe under a blocked reader would hang
            output.close()
    quiet = [line for line in lines if "celery.beat: Scheduler: Sending due task" in line]
    assert not quiet, "the console is flooded with schedule ticks at the default log level"


def test_bin_manage_sees_the_secret_and_database_that_make_run_uses(tmp_path: Path) -> None:
    """The README's second terminal (``bin/manage demo``) must reach the platform ``make run`` started."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE", "DJANGO_SETTINGS_MODULE")
    }
    env["KILN_VAR_DIR"] = str(tmp_path / "var")
    show = (
        "from django.conf import settings; db = settings.DATABASES['default']; "
        "print(settings.SECRET_KEY, db['ENGINE'], db['NAME'], settings.VAR_DIR)"
    )

    def manage() -> str:
        done = subprocess.run(
            [str(ROOT / "bin" / "manage"), "shell", "-c", show],
            cwd=tmp_path,  # any directory: the script finds the project
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    first = manage()
    secret = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert first.split()[0] == secret.read_text().strip()
    assert first.split()[-1] == str(tmp_path / "var")
    assert manage() == first  # the same key and database every time
