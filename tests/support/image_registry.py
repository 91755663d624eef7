"""Debian's ``docker-registry`` (the Registry v2 API) as a real process on a free loopback port.

Loopback registries are insecure to a Docker engine by default (its ``InsecureRegistryCIDRs``
hold 127.0.0.0/8), so an engine pushes to and pulls from one over plain HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from deployments.backends.ports import free_port

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: {deletes}
http:
  addr: 127.0.0.1:{port}
"""


def missing() -> str:
    """Why no registry can run here ("" when one can)."""
    if shutil.which("docker-registry"):
        return ""
    return "docker-registry is missing; run: bash .ci/setup.d/swarm.sh"


class LocalRegistry:
    """A registry serving from ``root``; ``address`` is its ``host:port`` once started."""

    def __init__(self, root: Path, *, deletes: bool = True) -> None:
        self.root = root
        self.deletes = deletes
        self.address = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, port: int = 0, timeout: float = 30.0) -> None:
        """Serve on ``port`` (a free one when 0; the same one again after ``stop`` keeps its tags valid)."""
        self.root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        config = self.root / "registry.yml"
        config.write_text(
            CONFIG.format(root=self.root / "data", port=port, deletes=str(self.deletes).lower())
        )
        with (self.root / "registry.log").open("ab") as log:
            self._proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not start: {self.log_tail()}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"http://{self.address}/v2/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def has(self, repository: str, tag: str) -> bool:
        """Whether the registry serves a manifest for ``repository:tag``."""
        answer = httpx.head(
            f"http://{self.address}/v2/{repository}/manifests/{tag}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=10,
        )
        return answer.status_code == 200

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "registry.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=30)
