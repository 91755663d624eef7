"""Beat's health is read from what beat does: a heartbeat each tick, fresh across many check intervals
(the old check, a schedule file's age, went stale after minutes while beat kept working), and
stale once beat stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.beat_health import heartbeat_age
from config.env import instance_id_for
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer
from tests.support.services import CeleryBeat, database_url_for_children

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MAX_AGE_S = 8.0
"""Above beat's longest sleep between ticks (CELERY_BEAT_MAX_LOOP_INTERVAL = 5 s)."""


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "config.beat_health", "--max-age-s", str(MAX_AGE_S)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_beat_stays_healthy_by_its_heartbeat_and_turns_unhealthy_when_it_stops(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    env = {
        **{name: value for name, value in os.environ.items() if name != "KILN_INSTANCE_ID"},
        "REDIS_URL": server.url,
        "CELERY_BROKER_URL": server.url,
        "KILN_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": database_url_for_children(),
    }
    instance = instance_id_for(env["DATABASE_URL"])  # what beat and the check both take without one
    beat = CeleryBeat(env, tmp_path / "beat.log")
    try:
        assert _check(env).returncode == 1  # no beat yet: no heartbeat
        beat.start()
        wait_for(lambda: heartbeat_age(server.url, instance) is not None, timeout=90, message=beat.log_tail())
        checked_since = time.monotonic()
        while time.monotonic() - checked_since < 3 * MAX_AGE_S:  # more than one interval, several times
            done = _check(env)
            assert done.returncode == 0, done.stderr + beat.log_tail()
            assert "healthy: beat ticked" in done.stdout
            time.sleep(1)

        beat.stop()
        wait_for(
            lambda: (heartbeat_age(server.url, instance) or 0) > MAX_AGE_S,
            timeout=3 * MAX_AGE_S,
            interval=0.5,
        )
        stale = _check(env)
        assert stale.returncode == 1
        assert "beat's last tick was" in stale.stderr
    finally:
        beat.stop()
        server.stop()
