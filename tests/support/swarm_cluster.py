"""A real two-node Docker Swarm on this machine, and a registry, for the swarm suite.

Two ``dockerd`` of our own, each with its socket, data root, exec root and pid file under one
temporary directory, without iptables or a bridge (as the machine's engine runs): the first inits
a swarm on a free loopback port and the second joins it on another, so both nodes advertise
127.0.0.1 and host-networked workers on either are reached there. Debian's ``docker-registry``
serves the Registry v2 API from the same directory. The machine's own engine is never touched but
for ``docker save`` of the local base image, which is loaded into the manager (nothing can be
pulled from the internet here); worker images reach the second node through the registry.

``start()`` and ``stop()`` bracket a session; ``stop()`` shuts the engines down (they stop their
containers) and removes the directory (in the background: it holds gigabytes of layers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from deployments.backends.ports import free_port
from tests.support.image_registry import LocalRegistry


def missing_prerequisites(base_image: str) -> str:
    """Why the swarm suite cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "the swarm suite starts its own dockerd: run it as root"
    for program in ("dockerd", "docker", "docker-registry"):
        if shutil.which(program) is None:
            return f"{program} is missing; run: bash .ci/setup.d/docker.sh && bash .ci/setup.d/swarm.sh"
    try:
        default = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=30)
        try:
            default.images.get(base_image)
        finally:
            default.close()
    except docker.errors.ImageNotFound:
        return f"the base image {base_image} is missing; run: bash .ci/setup.d/docker.sh"
    except (docker.errors.DockerException, OSError) as exc:
        return f"no Docker engine answers at the default socket ({exc}); run: bash .ci/setup.d/docker.sh"
    return ""


def _until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (docker.errors.DockerException, httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


class Engine:
    """One dockerd of ours."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.url = f"unix://{self.dir}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: docker.DockerClient | None = None

    def start(self) -> docker.DockerClient:
        self.dir.mkdir(parents=True)
        with (self.dir / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "dockerd",
                    "-H",
                    self.url,
                    "--data-root",
                    str(self.dir / "root"),
                    "--exec-root",
                    str(self.dir / "exec"),
                    "--pidfile",
                    str(self.dir / "pid"),
                    "--iptables=false",
                    "--bridge=none",
                    "--storage-driver=overlay2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client: docker.DockerClient = _until(self._connect, timeout=60, what=f"dockerd at {self.url}")
        self.client = client
        return client

    def _connect(self) -> docker.DockerClient | None:
        if not (self.dir / "docker.sock").exists():
            return None
        return docker.DockerClient(base_url=self.url, timeout=120)  # asks the engine its API version

    def terminate(self) -> None:
        """SIGTERM: it stops its containers and unmounts their layers."""
        if self.client is not None:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, *, timeout: float) -> None:
        """Until it has exited; past ``timeout``, SIGKILL for its whole process group (its containerd)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        path = self.dir / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class SwarmCluster:
    """A manager and a worker node, a registry; ``registry`` is its ``host:port``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kiln-swarm-", dir="/tmp"))  # short: sockets live here
        self.started = time.monotonic()
        self.first = Engine(self.root, "manager")
        self.second = Engine(self.root, "worker")
        self._registry = LocalRegistry(self.root / "registry")

    @property
    def registry(self) -> str:
        """The registry's ``host:port``."""
        return self._registry.address

    @property
    def manager(self) -> docker.DockerClient:
        assert self.first.client is not None
        return self.first.client

    @property
    def worker(self) -> docker.DockerClient:
        assert self.second.client is not None
        return self.second.client

    def start(self, *, base_image: str) -> None:
        self._registry.start()
        self.first.start()
        self.second.start()
        manager_port, worker_port = free_port(), free_port()
        self.manager.swarm.init(
            advertise_addr=f"127.0.0.1:{manager_port}", listen_addr=f"127.0.0.1:{manager_port}"
        )
        token = self.manager.swarm.attrs["JoinTokens"]["Worker"]
        self.worker.swarm.join(
            remote_addrs=[f"127.0.0.1:{manager_port}"],
            join_token=token,
            listen_addr=f"127.0.0.1:{worker_port}",
            advertise_addr=f"127.0.0.1:{worker_port}",
        )
        _until(
            lambda: len([n for n in self.manager.nodes.list() if n.attrs["Status"]["State"] == "ready"]) == 2,
            timeout=60,
            what="both swarm nodes ready",
        )
        self._load(base_image)

    def _load(self, image: str) -> None:
        """Copy ``image`` from the machine's engine into the manager (``docker save | docker load``)."""
        saver = subprocess.Popen(
            ["docker", "-H", "unix:///var/run/docker.sock", "save", image], stdout=subprocess.PIPE
        )
        loaded = subprocess.run(
            ["docker", "-H", self.first.url, "load", "--quiet"],
            stdin=saver.stdout,
            capture_output=True,
            check=False,
            timeout=300,
        )
        if saver.stdout is not None:
            saver.stdout.close()
        if saver.wait(timeout=60) != 0 or loaded.returncode != 0:
            raise RuntimeError(f"could not load {image} into the manager: {loaded.stderr.decode()[-500:]}")

    def node_id(self, client: docker.DockerClient) -> str:
        return str(client.info()["Swarm"]["NodeID"])

    def containers(self, label: str) -> list[dict[str, Any]]:
        """Containers (running or not) carrying ``label`` on either node, as the engines list them."""
        return [
            row
            for engine in (self.manager, self.worker)
            for row in engine.api.containers(all=True, filters={"label": label})
        ]

    def stop(self) -> None:
        """Both engines stop at once (each stops its containers), then the registry; then the directory."""
        engines = [engine for engine in (self.second, self.first) if engine.proc is not None]
        for engine in engines:
            engine.terminate()
        for engine in engines:
            engine.wait(timeout=30)
        self._registry.stop()
        self._unmount()
        # Gigabytes of image layers: removed in the background, so the session does not wait for the disk.
        subprocess.run(["sh", "-c", 'rm -rf "$0" >/dev/null 2>&1 &', str(self.root)], check=False)

    def _unmount(self) -> None:
        """What the engines left mounted under the directory (the network namespace of each one)."""
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{self.root}/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
