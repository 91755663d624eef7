"""Run untrusted-model work (inspection, export, parity) in a child process.

The child (``python -m registry.conversion``) imports no Django. It runs in its own
session with an address-space limit, no core dumps, and a wall-clock timeout
after which its whole process group is killed; a crash, hang or runaway
allocation fails that one job with a readable reason and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.errors import PlatformError

_BASE_DIR = Path(__file__).resolve().parent.parent
_STDERR_TAIL = 4000


class SandboxError(PlatformError):
    """The child process failed, timed out or ran out of memory."""

    default_code = "sandbox_failed"


def _limits(memory_mb: int) -> Callable[[], None]:
    def apply() -> None:
        _die_with_parent()
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the process that started it dies (a killed Celery worker)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _child_env(threads: int) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(
        {
            "PYTHONPATH": str(_BASE_DIR),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TORCH_DISABLE_ADDR2LINE": "1",
        }
    )
    return env


def run_child(
    command: str,
    payload: dict[str, Any],
    *,
    timeout_s: float,
    memory_mb: int,
    threads: int = 2,
    on_progress: Callable[[str], None] | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``python -m registry.conversion <command>`` with ``payload`` and return its JSON result.

    Progress lines the child prints to stdout as ``PROGRESS <text>`` are passed to
    ``on_progress`` as they arrive; ``heartbeat`` is called about once a second while the
    child runs, so a supervisor can tell a live job from a dead one.
    """
    with tempfile.TemporaryDirectory(prefix="kiln-child-") as workdir:
        request = Path(workdir) / "request.json"
        result = Path(workdir) / "result.json"
        request.write_text(json.dumps(payload), encoding="utf-8")
        argv = [sys.executable, "-m", "registry.conversion", command, str(request), str(result)]
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=_child_env(threads),
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                preexec_fn=_limits(memory_mb),
                start_new_session=True,
            )
            try:
                _pump_progress(proc, timeout_s, on_progress, heartbeat)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise SandboxError(
                    f"{command} took longer than the limit of {timeout_s:.0f} s and was stopped",
                    code="timeout",
                ) from None
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
            stderr.seek(0)
            tail = stderr.read()[-_STDERR_TAIL:].decode("utf-8", "replace")
        return _read_result(command, proc.returncode, result, tail, memory_mb)


def _pump_progress(
    proc: subprocess.Popen[bytes],
    timeout_s: float,
    on_progress: Callable[[str], None] | None,
    heartbeat: Callable[[], None] | None,
) -> None:
    deadline = time.monotonic() + timeout_s
    if proc.stdout is None:
        msg = "the child was started without a stdout pipe"
        raise RuntimeError(msg)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout_s)
            ready = selector.select(timeout=min(remaining, 1.0))
            if heartbeat is not None:
                heartbeat()
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"PROGRESS ") and on_progress is not None:
                    on_progress(line[9:].decode("utf-8", "replace")[:200])
    proc.wait(timeout=max(deadline - time.monotonic(), 1.0))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _read_result(command: str, returncode: int, result: Path, tail: str, memory_mb: int) -> dict[str, Any]:
    if result.exists():
        try:
            data: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
        if data.get("ok") is True:
            return data
        if data.get("error"):
            raise SandboxError(str(data["error"]), code=str(data.get("code", "failed")), extra=data)
    last = _last_error_line(tail)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = f" (possibly the memory limit of {memory_mb} MB)" if name in {"SIGKILL", "SIGSEGV"} else ""
        raise SandboxError(f"{command} crashed with {name}{hint}. {last}".strip(), code="crashed")
    if "MemoryError" in tail or "std::bad_alloc" in tail:
        raise SandboxError(f"{command} ran out of its memory limit of {memory_mb} MB", code="out_of_memory")
    raise SandboxError(f"{command} failed (exit {returncode}). {last}".strip(), code="crashed")


def _last_error_line(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[-500:]
    return lines[-1][-500:] if lines else ""
