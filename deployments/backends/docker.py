"""The ``docker`` backend: workers as containers of their version's image, on the engine at ``DOCKER_HOST``.

A handle is the container id. Containers carry labels (``kiln.instance``, ``kiln.worker``,
``kiln.deployment``, ``kiln.variant``, ``kiln.version``) so a restarted platform finds its own.
Networking follows ``KILN_DOCKER_NETWORK``:

- ``host``: the worker binds ``KILN_DOCKER_BIND_HOST`` (127.0.0.1) on free ports, as a process
  worker does, and reports to ``KILN_PUBLIC_URL``. The ports are chosen on this machine, so this
  mode is for an engine on the same machine.
- ``bridge`` or a user-defined network's name: the worker binds 0.0.0.0:8080/8081 in its own
  network namespace; the engine publishes them on ``KILN_DOCKER_BIND_HOST`` at ports it picks,
  read back after the start; reports go to ``KILN_DOCKER_PUBLIC_URL``, by default
  ``KILN_PUBLIC_URL`` with a loopback host replaced by ``host.docker.internal``, which the
  container resolves to its network's gateway (the engine's host).

The engine's restart policy stays ``no`` by default: the reconcile loop sees a dead container as it
sees a dead process and replaces it, counting restarts. ``stop`` keeps the container's last log lines
in ``<var>/workers/worker-<id>.log`` before removing it, so a dead worker's logs stay readable.
"""

from __future__ import annotations

import contextlib
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import docker
import docker.errors
from django.conf import settings
from docker.types import DeviceRequest, LogConfig

from deployments.backends.base import (
    BackendError,
    BackendStatus,
    WorkerHandle,
    WorkerSpec,
    probe_http_ready,
)
from deployments.backends.docker_engine import (
    ENGINE_ERRORS,
    engine,
    engine_seen_by_workers,
    engine_url,
    remember_engine,
    short_error,
    unavailable,
)
from deployments.backends.logs import tail_file
from deployments.backends.ports import free_port
from deployments.image_build import MODEL_PATH_IN_IMAGE
from inference_worker.contracts.worker_options import GRPC_PORT, HOST, HTTP_PORT

CONTAINER_HTTP_PORT, CONTAINER_GRPC_PORT = 8080, 8081
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def container_name(worker_id: int) -> str:
    instance = re.sub(r"[^a-zA-Z0-9_.-]", "-", settings.KILN_INSTANCE_ID)
    return f"{instance}-worker-{worker_id}"


def report_url_for_containers(url: str, *, bridge: bool = True) -> str:
    """The report URL as a container calls it: ``KILN_DOCKER_PUBLIC_URL`` when set; else, on a bridge,
    a loopback host becomes the engine's host (``host.docker.internal``)."""
    if settings.KILN_DOCKER_PUBLIC_URL:
        public = urlsplit(settings.KILN_DOCKER_PUBLIC_URL)
        parts = urlsplit(url)
        return urlunsplit(
            (public.scheme, public.netloc, public.path.rstrip("/") + parts.path, parts.query, "")
        )
    parts = urlsplit(url)
    if bridge and parts.hostname in _LOOPBACK:
        netloc = "host.docker.internal" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def restart_policy() -> dict[str, Any]:
    name, _, retries = settings.KILN_DOCKER_RESTART_POLICY.partition(":")
    return {"Name": name, "MaximumRetryCount": int(retries or 0)}


class DockerBackend:
    """Run each worker as a container of the variant's worker image."""

    name = "docker"
    uses_images = True

    @property
    def log_dir(self) -> Path:
        return Path(settings.VAR_DIR) / "workers"

    # -- checks ----------------------------------------------------------------------------
    def check_spec(self, *, gpu_ids: tuple[int, ...]) -> None:
        try:
            info = engine().info()
        except (BackendError, *ENGINE_ERRORS) as exc:
            # The web process may have no access to the engine (the compose stack mounts the socket
            # into the Celery worker only): then it trusts what the reconcile loop saw lately.
            seen = engine_seen_by_workers()
            if seen is None:
                raise exc if isinstance(exc, BackendError) else unavailable(exc) from exc
            info = seen
        else:
            remember_engine(info)
        if not gpu_ids:
            return
        runtimes = set(info.get("Runtimes") or {}) | {str(info.get("DefaultRuntime") or "")}
        if "nvidia" not in runtimes:
            raise BackendError(
                f"GPU ids {list(gpu_ids)} were asked for, but the Docker engine at {engine_url()} has no "
                "NVIDIA runtime (install nvidia-container-toolkit there), so it cannot give containers a "
                "GPU; use device cpu",
                code="no_gpu",
            )
        if not settings.KILN_DOCKER_GPU_BASE_IMAGE:
            raise BackendError(
                "GPU workers need KILN_DOCKER_GPU_BASE_IMAGE: a CUDA 13 runtime image with cuDNN 9 and "
                "Python 3.11 to build the GPU worker image on (see the README)",
                code="no_gpu",
            )

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, spec: WorkerSpec) -> WorkerHandle:
        if not spec.image:
            raise BackendError("the variant has no worker image yet", code="no_image")
        client = engine()
        bridge = settings.KILN_DOCKER_NETWORK != "host"
        by_name = bridge and settings.KILN_DOCKER_WORKER_ADDRESS == "network"
        publish_host = container_name(spec.worker_id) if by_name else settings.KILN_DOCKER_BIND_HOST
        if bridge:
            bind, http_port, grpc_port = "0.0.0.0", CONTAINER_HTTP_PORT, CONTAINER_GRPC_PORT  # noqa: S104
        else:
            bind, http_port, grpc_port = publish_host, free_port(publish_host), free_port(publish_host)
        options = self.container_options(client, spec, bind=bind, http_port=http_port, grpc_port=grpc_port)
        try:
            self._remove_leftover(client, options["name"])
            container = client.containers.create(spec.image, **options)
        except docker.errors.ImageNotFound as exc:
            raise BackendError(
                f"the worker image {spec.image} is not on the engine: {short_error(exc)}",
                code="image_missing",
            ) from exc
        except ENGINE_ERRORS as exc:
            raise BackendError(f"could not create the worker container: {short_error(exc)}") from exc
        try:
            container.start()
            if bridge and not by_name:
                container.reload()
                http_port = _published(container, CONTAINER_HTTP_PORT)
                grpc_port = _published(container, CONTAINER_GRPC_PORT)
        except (BackendError, *ENGINE_ERRORS) as exc:
            self._save_logs_and_remove(container)
            raise BackendError(f"could not start the worker container: {short_error(exc)}") from exc
        return WorkerHandle(
            handle=str(container.id),
            http_url=f"http://{publish_host}:{http_port}",
            grpc_target=f"{publish_host}:{grpc_port}",
            log_path=str(self.log_dir / f"worker-{spec.worker_id}.log"),
        )

    def container_options(
        self,
        client: docker.DockerClient | None,
        spec: WorkerSpec,
        *,
        bind: str,
        http_port: int,
        grpc_port: int,
    ) -> dict[str, Any]:
        """``containers.create`` arguments: command, labels, environment, network, limits, GPUs (without
        ``client``, no engine is asked: a bridge's gateway stays ``host-gateway``)."""
        bridge = settings.KILN_DOCKER_NETWORK != "host"
        report_url = report_url_for_containers(spec.launch.report_url, bridge=bridge)
        launch = spec.placed(
            host=bind,
            http_port=http_port,
            grpc_port=grpc_port,
            model_path=MODEL_PATH_IN_IMAGE,
            report_url=report_url,
        )
        options: dict[str, Any] = {
            "command": launch.argv(),
            "name": container_name(spec.worker_id),
            "detach": True,
            "labels": self._labels(spec),
            # The image's HEALTHCHECK reads where the worker listens from these.
            "environment": launch.environment(HOST.name, HTTP_PORT.name, GRPC_PORT.name),
            "network_mode": settings.KILN_DOCKER_NETWORK,
            "restart_policy": restart_policy(),
            "log_config": LogConfig(
                type=LogConfig.types.JSON,
                config={"max-size": f"{settings.KILN_WORKER_LOG_MAX_BYTES // 1024}k", "max-file": "2"},
            ),
        }
        if bridge and settings.KILN_DOCKER_WORKER_ADDRESS != "network":
            publish_host = settings.KILN_DOCKER_BIND_HOST
            options["ports"] = {
                f"{CONTAINER_HTTP_PORT}/tcp": (publish_host, None),
                f"{CONTAINER_GRPC_PORT}/tcp": (publish_host, None),
            }
        if bridge:
            gateway = _gateway(client, settings.KILN_DOCKER_NETWORK) if client else "host-gateway"
            options["extra_hosts"] = {"host.docker.internal": gateway}
        if settings.KILN_DOCKER_MEMORY_LIMIT:
            options["mem_limit"] = settings.KILN_DOCKER_MEMORY_LIMIT
        if settings.KILN_DOCKER_CPUS:
            options["nano_cpus"] = int(settings.KILN_DOCKER_CPUS * 1e9)
        if spec.gpu_ids:
            options["device_requests"] = [
                DeviceRequest(device_ids=[str(i) for i in spec.gpu_ids], capabilities=[["gpu"]])
            ]
        return options

    def probe_ready(self, handle: str, *, http_url: str) -> bool:
        return probe_http_ready(http_url)

    def status(self, handle: str) -> BackendStatus:
        try:
            state = engine().api.inspect_container(handle)["State"]
        except docker.errors.NotFound:
            return BackendStatus(running=False, detail="the container is gone")
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc
        if state.get("Running") or state.get("Restarting"):
            return BackendStatus(running=True)  # restarting: the engine's restart policy owns it
        code = state.get("ExitCode")
        detail = f"the container exited with code {code}"
        if state.get("OOMKilled"):
            detail += f" (killed for exceeding its memory limit of {settings.KILN_DOCKER_MEMORY_LIMIT})"
        elif code == 137:
            detail += " (killed)"
        if state.get("Error"):
            detail += f": {state['Error']}"
        return BackendStatus(running=False, exit_code=code, detail=detail)

    def stop(self, handle: str, *, grace_s: float) -> None:
        """SIGTERM, up to ``grace_s`` for the worker to drain, SIGKILL; keep its logs; remove it."""
        try:
            container = engine().containers.get(handle)
        except docker.errors.NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=max(round(grace_s), 0))
        self._save_logs_and_remove(container)

    def logs(self, handle: str, *, log_path: str, tail: int) -> str:
        try:
            raw = engine().api.logs(handle, stdout=True, stderr=True, tail=tail)
        except (docker.errors.NotFound, *ENGINE_ERRORS):
            return tail_file(Path(log_path), tail) if log_path else ""
        text: str = raw.decode("utf-8", "replace")
        return text.rstrip("\n")

    def managed_handles(self, *, min_age_s: float) -> list[str]:
        """Containers of this platform instance (running or not) created over ``min_age_s`` ago."""
        try:
            rows = engine().api.containers(
                all=True, filters={"label": f"kiln.instance={settings.KILN_INSTANCE_ID}"}
            )
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc
        now = time.time()
        return [str(row["Id"]) for row in rows if now - float(row.get("Created") or 0) >= min_age_s]

    # -- helpers ---------------------------------------------------------------------------
    def _labels(self, spec: WorkerSpec) -> dict[str, str]:
        labels = {f"kiln.{key}": value for key, value in spec.labels.items()}
        return {
            **labels,
            "kiln.instance": settings.KILN_INSTANCE_ID,
            "kiln.worker": str(spec.worker_id),
            "kiln.deployment": spec.deployment,
            "kiln.variant": spec.variant,
            "kiln.version": spec.launch.model_version,
        }

    def _remove_leftover(self, client: docker.DockerClient, name: str) -> None:
        """A container of the same name is a leftover of an interrupted start of this worker row."""
        with contextlib.suppress(docker.errors.NotFound):
            self._save_logs_and_remove(client.containers.get(name))

    def _save_logs_and_remove(self, container: Any) -> None:
        worker = (container.labels or {}).get("kiln.worker", "")
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            if worker.isdigit():
                container.reload()
                state = container.attrs.get("State") or {}
                lines = container.logs(stdout=True, stderr=True, tail=500).decode("utf-8", "replace")
                self.log_dir.mkdir(parents=True, exist_ok=True)
                with (self.log_dir / f"worker-{worker}.log").open("a") as log:
                    log.write(lines.rstrip("\n") + "\n" if lines else "")
                    log.write(
                        f"--- container {container.short_id} ended with code {state.get('ExitCode')} "
                        f"at {datetime.now().astimezone():%F %T}\n"
                    )
            container.remove(force=True)


def _gateway(client: docker.DockerClient, network: str) -> str:
    """The host's address on ``network`` (what ``host.docker.internal`` should mean in its containers)."""
    try:
        configs = client.api.inspect_network(network).get("IPAM", {}).get("Config") or []
    except docker.errors.NotFound as exc:
        raise BackendError(f"the Docker network {network!r} (KILN_DOCKER_NETWORK) does not exist") from exc
    except ENGINE_ERRORS as exc:
        raise unavailable(exc) from exc
    gateways = [str(c["Gateway"]) for c in configs if c.get("Gateway") and ":" not in str(c["Gateway"])]
    return gateways[0] if gateways else "host-gateway"


def _published(container: Any, port: int) -> int:
    bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp") or []
    if not bindings:
        raise BackendError(f"the engine published no host port for the worker's port {port}")
    return int(bindings[0]["HostPort"])
