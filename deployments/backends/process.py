"""The ``process`` backend: workers as local subprocesses on free ports of 127.0.0.1.

A handle is ``<pid>:<start time>`` so a recycled pid is never mistaken for our
worker. Output goes to a per-worker log file that the reconcile loop keeps
bounded. Workers run in their own session; stopping signals the whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from deployments.backends.base import (
    BackendError,
    BackendStatus,
    WorkerHandle,
    WorkerSpec,
    probe_http_ready,
)
from deployments.backends.logs import tail_file
from deployments.backends.ports import free_port
from inference_worker.contracts.worker_options import ENV_PREFIX

_MARKER = "KILN_MANAGED_BY"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _parse(handle: str) -> tuple[int, str]:
    pid, _, started = handle.partition(":")
    if not pid.isdigit():
        raise BackendError(f"not a process handle: {handle!r}")
    return int(pid), started


class ProcessBackend:
    """Run ``python -m inference_worker serve`` as detached local processes."""

    name = "process"
    uses_images = False

    def __init__(self) -> None:
        self.host = settings.KILN_PROCESS_BIND_HOST
        self.log_dir = Path(settings.VAR_DIR) / "workers"

    def check_spec(self, *, gpu_ids: tuple[int, ...]) -> None:
        if gpu_ids and not _has_nvidia_gpu():
            raise BackendError(
                f"GPU ids {list(gpu_ids)} were asked for, but this machine has no NVIDIA GPU for the process "
                "backend; use device cpu",
                code="no_gpu",
            )

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        return self.spawn(spec, log_name=f"worker-{spec.worker_id}")

    def spawn(self, spec: WorkerSpec, *, log_name: str) -> WorkerHandle:
        """Start the worker of ``spec``, its output in ``<var>/workers/<log_name>.log`` (``start`` for a
        deployment's worker; a serving-advice measurement starts its own under another name)."""
        http_port, grpc_port = free_port(self.host), free_port(self.host)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{log_name}.log"
        launch = spec.placed(
            host=self.host, http_port=http_port, grpc_port=grpc_port, model_path=str(spec.onnx_path)
        )
        argv = [sys.executable, "-m", "inference_worker", *launch.argv()]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "DJANGO_"))},
            **launch.environment(),
            "PYTHONUNBUFFERED": "1",
            _MARKER: settings.KILN_INSTANCE_ID,
            f"{ENV_PREFIX}DB_ID": str(spec.worker_id),
        }
        if spec.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpu_ids))
        with log_path.open("ab") as log:
            log.write(f"--- starting worker {spec.worker_id} at {time.strftime('%F %T')}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=settings.BASE_DIR,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BackendError(f"could not start the worker process: {exc}") from exc
        started = _start_time(proc.pid) or ""
        return WorkerHandle(
            handle=f"{proc.pid}:{started}",
            http_url=f"http://{self.host}:{http_port}",
            grpc_target=f"{self.host}:{grpc_port}",
            log_path=str(log_path),
        )

    def probe_ready(self, handle: str, *, http_url: str) -> bool:
        return probe_http_ready(http_url)

    def status(self, handle: str) -> BackendStatus:
        pid, started = _parse(handle)
        _reap(pid)
        now = _start_time(pid)
        if now is None or (started and now != started):
            return BackendStatus(running=False, detail="the process has exited")
        return BackendStatus(running=True)

    def stop(self, handle: str, *, grace_s: float) -> None:
        pid, _started = _parse(handle)
        if not self.status(handle).running:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not self.status(handle).running:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)

    def exit_fd(self, handle: str) -> int | None:
        """A pidfd that becomes readable when the worker exits (any process may wait on it, not only
        its parent); None when it has exited already."""
        pid, started = _parse(handle)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        now = _start_time(pid)
        if now is None or (started and now != started):  # gone, or the pid was reused
            os.close(fd)
            return None
        return fd

    def logs(self, handle: str, *, log_path: str, tail: int) -> str:
        return tail_file(Path(log_path), tail) if log_path else ""

    def managed_handles(self, *, min_age_s: float) -> list[str]:
        """Worker processes of this platform instance, found through their environment marker."""
        handles = []
        ticks = os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        marker = f"{_MARKER}={settings.KILN_INSTANCE_ID}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                started = _start_time(int(entry.name))
                if started is not None and uptime - int(started) / ticks >= min_age_s:
                    handles.append(f"{entry.name}:{started}")
        return handles


def _reap(pid: int) -> None:
    """Collect the exit status when the worker is our own child (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
