"""``make run`` heals: each of its components killed with SIGKILL comes back, and a conversion that was
running in the killed Celery worker completes (the conversion sweep resumes it), nothing lost.

The stack runs on SQLite in a temporary ``KILN_VAR_DIR``, a Celery queue and instance id of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from functools import partial
from pathlib import Path

import httpx
import pytest

from deployments.backends.ports import free_port
from deployments.management.supervisor import RestartPolicy
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.support.torch_models import save_torchscript_cnn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_restart_delay_doubles_with_each_recent_death_up_to_its_cap() -> None:
    policy = RestartPolicy(first_delay_s=1.0, max_delay_s=30.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 2, 4, 8, 16, 30, 30]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class Stack:
    """A running ``manage.py runstack`` and its console."""

    def __init__(self, tmp_path: Path) -> None:
        self.web_port, self.gateway_port = free_port(), free_port()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE")
        }
        tag = uuid.uuid4().hex[:8]
        self.env.update(
            KILN_VAR_DIR=str(tmp_path / "var"),
            SECRET_KEY="runstack-test-" + uuid.uuid4().hex,
            REDIS_URL="redis://127.0.0.1:6379/13",
            KILN_INSTANCE_ID=f"runstack-{tag}",
            KILN_CELERY_QUEUE=f"runstack-{tag}",
            KILN_GATEWAY_PORT=str(self.gateway_port),
            KILN_CONVERT_LEASE_S="5",  # a conversion whose worker died resumes after 5 s of silence
            KILN_CONVERSION_SWEEP_S="2",
        )
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runstack", "--port", str(self.web_port), "--web-workers", "1"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # close() can end the whole stack, children and all
        )
        output = self.proc.stdout
        assert output is not None
        self.output = output
        self.reader = threading.Thread(
            target=lambda: self.lines.extend(iter(output.readline, "")), daemon=True
        )
        self.reader.start()

    def console(self) -> str:
        return "".join(self.lines)

    def pid(self, component: str) -> int:
        """The pid the console last named for ``component``."""
        found = re.findall(rf"(?:started|restarted) {re.escape(component)} \(pid (\d+)\)", self.console())
        assert found, self.console()[-3000:]
        return int(found[-1])

    def manage(self, *argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    def close(self) -> None:
        """Stop the stack and every process it started (a SIGKILL of runstack alone would leave its
        children holding the console pipe, and closing it under the reader thread would hang)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        if not self.reader.is_alive():
            self.output.close()


def _replaced(stack: Stack, component: str, before: int) -> bool:
    return stack.pid(component) != before


def test_make_run_restarts_each_killed_component_and_the_interrupted_conversion_completes(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path)
    web = f"http://127.0.0.1:{stack.web_port}"
    gateway = f"http://127.0.0.1:{stack.gateway_port}"
    try:
        wait_for(
            lambda: "Kiln is running at" in stack.console() or stack.proc.poll() is not None,
            timeout=180,
            message="the banner",
        )
        assert stack.proc.poll() is None, stack.console()[-3000:]
        wait_for(lambda: _answers(f"{web}/healthz"), timeout=60, message="the web app")
        token = stack.manage("create_api_token", "admin").splitlines()[-1]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=web, headers=headers, timeout=30) as api:
            assert api.post("/api/v1/models/", json={"name": "healing"}).status_code == 201
            model_file = tmp_path / "cnn.pt"
            signature = save_torchscript_cnn(model_file)
            with model_file.open("rb") as handle:
                uploaded = api.post(
                    "/api/v1/models/healing/versions/",
                    files={"file": handle},
                    data={"signature": json.dumps(signature)},
                )
            assert uploaded.status_code in (201, 202), uploaded.text

            def status() -> str:
                return str(api.get("/api/v1/models/healing/versions/1/").json()["status"])

            wait_for(
                lambda: status() == "converting", timeout=120, interval=0.1, message="the conversion to start"
            )
            for component in ("worker-long", "web", "worker", "beat", "gateway"):
                before = stack.pid(component)
                os.kill(before, signal.SIGKILL)
                wait_for(
                    partial(_replaced, stack, component, before),
                    timeout=60,
                    message=f"{component} to restart",
                )
                assert f"{component} (pid {before}) was killed by SIGKILL; restarting" in stack.console()
                wait_for(lambda: _answers(f"{web}/healthz"), timeout=60, message="the web app")
                wait_for(lambda: _answers(f"{gateway}/v2/health/live"), timeout=60, message="the gateway")

            wait_for(
                lambda: status() in ("ready", "failed"), timeout=300, interval=0.5, message="the conversion"
            )
            version = api.get("/api/v1/models/healing/versions/1/").json()
            assert version["status"] == "ready", version
            assert api.get("/api/v1/models/healing/versions/").json()["count"] == 1
            assert stack.proc.poll() is None, stack.console()[-3000:]

        stack.proc.send_signal(signal.SIGINT)
        assert stack.proc.wait(timeout=60) == 0, stack.console()[-3000:]
        assert not _answers(f"{web}/healthz")
    finally:
        stack.close()
