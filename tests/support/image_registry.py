"""Debian's ``docker-registry`` (the Registry v2 API) as a real process on a free loopback port.

Loopback registries are insecure to a Docker engine by default (its ``InsecureRegistryCIDRs``
hold 127.0.0.0/8), so an engine pushes to and pulls from one over plain HTTP.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import httpx

from deployments.backends.ports import free_port
from tests.support.registry_tokens import TokenServer, token_config

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
{auth}"""
HTPASSWD = """\
auth:
  htpasswd:
    realm: kiln-test
    path: {path}
"""


def missing() -> str:
    """Why no registry can run here ("" when one can)."""
    if shutil.which("docker-registry"):
        return ""
    return "docker-registry is missing; run: bash .ci/setup.d/swarm.sh"


class LocalRegistry:
    """A registry serving from ``root``; ``address`` is its ``host:port`` once started."""

    def __init__(
        self, root: Path, *, deletes: bool = True, user: tuple[str, str] | None = None, tokens: bool = False
    ) -> None:
        self.root = root
        self.deletes = deletes
        self.user = user  # credentials the registry asks for (htpasswd, or its token server's), or none
        self.tokens = TokenServer(root, user) if tokens and user else None
        self.address = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, port: int = 0, timeout: float = 30.0) -> None:
        """Serve on ``port`` (a free one when 0; the same one again after ``stop`` keeps its tags valid)."""
        self.root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        config = self.root / "registry.yml"
        auth = ""
        if self.tokens is not None:
            self.tokens.start()
            auth = token_config(self.tokens)
        elif self.user is not None:
            users = self.root / "htpasswd"
            users.write_text(f"{self.user[0]}:{_bcrypt(self.user[1])}\n")
            auth = HTPASSWD.format(path=users)
        config.write_text(
            CONFIG.format(root=self.root / "data", port=port, deletes=str(self.deletes).lower(), auth=auth)
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
            answer = httpx.get(
                f"http://{self.address}/v2/", timeout=2, headers=self._auth("registry:catalog:*")
            )
            return answer.status_code == 200
        except httpx.HTTPError:
            return False

    def has(self, repository: str, tag: str) -> bool:
        """Whether the registry serves a manifest for ``repository:tag``."""
        accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
        answer = httpx.head(
            f"http://{self.address}/v2/{repository}/manifests/{tag}",
            headers={**accept, **self._auth(f"repository:{repository}:pull")},
            timeout=10,
        )
        return answer.status_code == 200

    def _auth(self, scope: str) -> dict[str, str]:
        """The Authorization header this registry wants for ``scope``."""
        if self.tokens is not None:
            return {"Authorization": f"Bearer {self.tokens.token(scope)}"}
        if self.user is not None:
            pair = base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "registry.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=30)
        if self.tokens is not None:
            self.tokens.stop()


def _bcrypt(password: str) -> str:
    """An htpasswd bcrypt hash from the C library's crypt (no bcrypt package in the venv)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))  # noqa: S324 (bcrypt: what htpasswd wants)
