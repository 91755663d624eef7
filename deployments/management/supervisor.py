"""Keeps the components of ``make run`` alive: one that dies is started again, with backoff.

Each component (gunicorn, a Celery worker, beat, the gateway) runs in a process group of its own,
so a dead component's leftovers (gunicorn's or Celery's pool children, a conversion's sandbox)
are stopped with it before it starts again: nothing of it keeps a port or a job. Model workers
are not in those groups (the process backend starts them in sessions of their own) and keep
serving. A component that died is started again after ``RestartPolicy.delay``; one that dies
``crash_loop_deaths`` times within ``crash_loop_window_s`` is a crash loop and stops the stack.
Conversions that were running in a killed Celery worker resume through the conversion sweep
(their lease runs out), as after any lost worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RestartPolicy:
    """When to start a dead component again, and when to give up."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    crash_loop_deaths: int = 5
    crash_loop_window_s: float = 60.0

    def delay(self, recent_deaths: int) -> float:
        """The wait before the next start: doubles with each death in the window."""
        return float(min(self.first_delay_s * 2 ** max(recent_deaths - 1, 0), self.max_delay_s))


@dataclass
class Component:
    """One supervised command and what is known of its runs."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    def start(self) -> int:
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, process_group=0)
        self.restart_at = None
        return self.proc.pid

    def wait(self, timeout_s: float) -> None:
        """Wait for the leader to exit; SIGKILL the group when it has not after ``timeout_s``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def signal_group(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)


class Supervisor:
    """Runs the components until ``stopping()`` says so or one of them crash-loops."""

    def __init__(
        self,
        components: list[Component],
        *,
        say: Callable[[str], None],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.components = components
        self.say = say
        self.policy = policy or RestartPolicy()
        self.clock = clock

    def start_all(self) -> None:
        for component in self.components:
            self.say(f"started {component.name} (pid {component.start()})")

    def watch(self, stopping: Callable[[], bool], *, period_s: float = 0.25) -> str | None:
        """Restart the dead until asked to stop; the name of a crash-looping component, or None."""
        while not stopping():
            looping = self.check()
            if looping is not None:
                return looping
            time.sleep(period_s)
        return None

    def check(self) -> str | None:
        """One look at every component: note the deaths, start those whose delay has passed."""
        now = self.clock()
        for component in self.components:
            proc = component.proc
            if component.restart_at is not None:
                if now >= component.restart_at:
                    self.say(f"restarted {component.name} (pid {component.start()})")
                continue
            if proc is None or proc.poll() is None:
                continue
            component.signal_group(signal.SIGKILL)  # its pool children, a conversion's sandbox
            deaths = component.deaths
            deaths.append(now)
            while deaths and now - deaths[0] > self.policy.crash_loop_window_s:
                deaths.popleft()
            how = _exit_text(proc.returncode)
            if len(deaths) >= self.policy.crash_loop_deaths:
                self.say(
                    f"{component.name} (pid {proc.pid}) {how}: {len(deaths)} exits within "
                    f"{self.policy.crash_loop_window_s:.0f} s, a crash loop; stopping the stack"
                )
                return component.name
            delay = self.policy.delay(len(deaths))
            component.restart_at = now + delay
            self.say(f"{component.name} (pid {proc.pid}) {how}; restarting in {delay:.0f} s")
        return None

    def stop_all(self, *, grace_s: float = 20.0) -> None:
        """SIGTERM to every group, then SIGKILL to what is left after ``grace_s``."""
        running = [c for c in self.components if c.proc is not None and c.proc.poll() is None]
        for component in running:
            component.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for component in running:
            component.wait(max(deadline - time.monotonic(), 0.1))
        for component in self.components:  # leftovers of groups whose leader exited first
            component.signal_group(signal.SIGKILL)


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with {returncode}"
