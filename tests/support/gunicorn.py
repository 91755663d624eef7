"""The web app under gunicorn, started the way ``make run`` and the images start it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from deployments.backends.ports import free_port
from tests.support.paths import ROOT
from tests.support.polling import wait_for


@contextmanager
def gunicorn(log: Path, env: dict[str, str], *, workers: int = 2, threads: int = 2) -> Iterator[str]:
    """gunicorn with ``config.gunicorn_conf`` on a free port; yields its URL once it answers HTTP."""
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "gunicorn"),
        "config.wsgi",
        *("--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads)),
        *("--config", "python:config.gunicorn_conf"),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=60, message=f"gunicorn to answer (log: {log})")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        # /metrics needs no database and is not counted by the request metrics that tests read
        httpx.get(f"{url}/metrics", timeout=5)
    except httpx.TransportError:
        return False
    return True
