"""The ``swarm`` backend: one Docker Swarm service per variant, through a manager at ``DOCKER_HOST``.

The platform writes the desired service (``apply_service``: image, command, replica count,
placement, resources, update and restart policies) and reads back its tasks
(``service_status``); the swarm places, restarts, moves and rolls the tasks on its nodes. Nothing
here starts a container. A task's handle is its id; its address is its node's (the node label
``kiln.address`` when set, else the address the node joined with) and the ports its worker
reports. Services, their containers and their secrets carry ``kiln.*`` labels (``swarm_spec``), so
a restarted platform finds its own and removes what no variant wants.

Images come from the registry named in ``KILN_DOCKER_IMAGE_REPOSITORY`` (every node pulls them);
with ``KILN_DOCKER_REGISTRY_USERNAME``/``_PASSWORD`` the manager passes the credentials on to
the nodes. Task logs are read through the manager (``/tasks/{id}/logs``), from any node.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from django.conf import settings
from docker.types import ServiceMode

import deployments.backends.swarm_spec as sp
from deployments.backends.base import (
    BackendError,
    Replica,
    ServiceSpec,
    ServiceStatus,
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
from deployments.backends.docker_images import registry_of
from deployments.backends.logs import tail_file

ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}
DIED = {"complete", "failed", "rejected", "orphaned"}
"""Ended on its own: a task the swarm stopped (update, scale-down, drained node) ends ``shutdown``."""
_NODE_GONE = {"down", "disconnected", "unknown"}


class SwarmBackend:
    """Run each variant as a replicated Swarm service of its worker image."""

    name = "swarm"
    uses_images = True
    owns_placement = True

    def __init__(self) -> None:
        self._logged_in: set[int] = set()

    # -- checks ----------------------------------------------------------------------------
    def check_spec(self, *, gpu_ids: tuple[int, ...]) -> None:
        try:
            info = engine().info()
        except (BackendError, *ENGINE_ERRORS) as exc:
            seen = engine_seen_by_workers()  # the web process may have no engine socket
            if seen is None:
                raise exc if isinstance(exc, BackendError) else unavailable(exc) from exc
            info = seen
        else:
            remember_engine(info)
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise BackendError(
                f"the Docker engine at {engine_url()} is not a swarm manager; run 'docker swarm init' "
                "there (see the README's 'More than one machine') or point DOCKER_HOST at a manager",
                code="not_a_manager",
            )
        if not registry_of(settings.KILN_DOCKER_IMAGE_REPOSITORY):
            raise BackendError(
                "swarm nodes pull worker images from a registry: set KILN_DOCKER_IMAGE_REPOSITORY to "
                f"<registry host:port>/kiln-worker (it is {settings.KILN_DOCKER_IMAGE_REPOSITORY!r})",
                code="no_registry",
            )
        if gpu_ids and not settings.KILN_DOCKER_GPU_BASE_IMAGE:
            raise BackendError(
                "GPU workers need KILN_DOCKER_GPU_BASE_IMAGE: a CUDA 13 runtime image with cuDNN 9 and "
                "Python 3.11 to build the GPU worker image on (see the README)",
                code="no_gpu",
            )

    # -- the service -----------------------------------------------------------------------
    def apply_service(self, spec: ServiceSpec) -> bool:
        client = engine()
        try:
            self._login(client)
            current = self._find(client, spec.variant_id)
            if current is None:
                secret, digest = self._secret(client, spec)
                template = sp.task_template(spec, secret=secret)
                client.api.create_service(
                    template,
                    name=sp.service_name(spec),
                    labels=sp.service_labels(
                        spec, token_digest=digest, secret=secret, fingerprint=sp.fingerprint(spec, template)
                    ),
                    mode=ServiceMode("replicated", replicas=spec.replicas),
                    update_config=sp.update_config(),
                    rollback_config=sp.rollback_config(),
                )
                return True
            return self._update(client, current, spec)
        except docker.errors.APIError as exc:
            raise BackendError(f"the swarm manager refused the service: {short_error(exc)}") from exc
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc

    def _update(self, client: docker.DockerClient, current: dict[str, Any], spec: ServiceSpec) -> bool:
        """Update the service when what is sent or the replica count changed (only the count: no roll)."""
        labels = current["Spec"].get("Labels") or {}
        attached = current["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or [{}]
        secret = sp.Secret(id=attached[0].get("SecretID", ""), name=attached[0].get("SecretName", ""))
        template = sp.task_template(spec, secret=secret)
        wanted = sp.fingerprint(spec, template)
        replicas = _replicas(current)
        if labels.get(sp.FINGERPRINT) == wanted and replicas == spec.replicas:
            return False
        if labels.get(sp.FINGERPRINT) == wanted:
            template = current["Spec"]["TaskTemplate"]  # a new count only: the tasks stay as they are
        client.api.update_service(
            current["ID"],
            current["Version"]["Index"],
            task_template=template,
            name=current["Spec"]["Name"],
            labels=sp.service_labels(
                spec, token_digest=labels.get(sp.TOKEN_DIGEST, ""), secret=secret, fingerprint=wanted
            ),
            mode=ServiceMode("replicated", replicas=spec.replicas),
            update_config=sp.update_config(),
            rollback_config=sp.rollback_config(),
        )
        return True

    def service_status(self, variant_id: int) -> ServiceStatus:
        client = engine()
        try:
            service = self._find(client, variant_id)
            if service is None:
                return ServiceStatus(exists=False)
            tasks = client.api.tasks(filters={"service": service["ID"]})
            nodes = client.api.nodes()
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc
        labels = service["Spec"].get("Labels") or {}
        update = service.get("UpdateStatus") or {}
        replicas = [_replica(task, _Nodes(nodes)) for task in tasks]
        return ServiceStatus(
            exists=True,
            replicas=_replicas(service),
            spec_hash=labels.get(sp.SPEC, ""),
            token_digest=labels.get(sp.TOKEN_DIGEST, ""),
            tasks=tuple(sorted(replicas, key=lambda r: (r.slot, r.handle))),
            update_state=str(update.get("State") or ""),
            update_message=str(update.get("Message") or ""),
            rolled_back_from=labels.get(sp.ROLLED_BACK_FROM, ""),
        )

    def scale_service(self, variant_id: int, replicas: int) -> bool:
        return self._amend(variant_id, replicas=replicas)

    def note_rollback(self, variant_id: int, spec_hash: str) -> None:
        self._amend(variant_id, labels={sp.ROLLED_BACK_FROM: spec_hash})

    def _amend(
        self, variant_id: int, *, replicas: int | None = None, labels: dict[str, str] | None = None
    ) -> bool:
        """Change the count or add labels, sending the tasks' template as it stands (no task restarts)."""
        client = engine()
        try:
            current = self._find(client, variant_id)
            if current is None:
                return False
            spec = current["Spec"]
            count = _replicas(current) if replicas is None else replicas
            merged = {**(spec.get("Labels") or {}), **(labels or {})}
            if count == _replicas(current) and merged == (spec.get("Labels") or {}):
                return False
            client.api.update_service(
                current["ID"],
                current["Version"]["Index"],
                task_template=spec["TaskTemplate"],
                name=spec["Name"],
                labels=merged,
                mode=ServiceMode("replicated", replicas=count),
                update_config=spec.get("UpdateConfig"),
                rollback_config=spec.get("RollbackConfig"),
            )
            return True
        except docker.errors.APIError as exc:
            raise BackendError(
                f"the swarm manager refused to change the service: {short_error(exc)}"
            ) from exc
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc

    def remove_service(self, variant_id: int) -> None:
        client = engine()
        try:
            service = self._find(client, variant_id)
            if service is not None:
                client.api.remove_service(service["ID"])
            for secret in client.api.secrets(filters={"label": _ours(variant_id)}):
                # Still mounted by tasks on their way out: the orphan sweep removes it later.
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_secret(secret["ID"])
        except docker.errors.NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc

    def managed_services(self, *, min_age_s: float) -> list[int]:
        """Variants with a service or a leftover secret of this platform, created over ``min_age_s`` ago."""
        client = engine()
        try:
            rows = [
                *client.api.services(filters={"label": _ours()}),
                *client.api.secrets(filters={"label": _ours()}),
            ]
        except ENGINE_ERRORS as exc:
            raise unavailable(exc) from exc
        now, found = time.time(), set()
        for row in rows:
            variant = (row.get("Spec", {}).get("Labels") or {}).get(sp.VARIANT_ID, "")
            if variant.isdigit() and now - _timestamp(row.get("CreatedAt", "")) >= min_age_s:
                found.add(int(variant))
        return sorted(found)

    # -- one task --------------------------------------------------------------------------
    def probe_ready(self, handle: str, *, http_url: str) -> bool:
        return probe_http_ready(http_url)

    def logs(self, handle: str, *, log_path: str, tail: int) -> str:
        """A task's output through the manager (the Engine API's task logs, which docker-py does not wrap)."""
        try:
            api = engine().api
            response = api._get(
                api._url("/tasks/{0}/logs", handle),
                params={"stdout": 1, "stderr": 1, "tail": str(tail)},
                stream=False,
            )
            raw: bytes = api._get_result_tty(False, response, False)
        except (BackendError, *ENGINE_ERRORS):
            return tail_file(Path(log_path), tail) if log_path else ""
        return raw.decode("utf-8", "replace").rstrip("\n")

    # -- helpers ---------------------------------------------------------------------------
    def _find(self, client: docker.DockerClient, variant_id: int) -> dict[str, Any] | None:
        found = client.api.services(filters={"label": _ours(variant_id)})
        return found[0] if found else None

    def _secret(self, client: docker.DockerClient, spec: ServiceSpec) -> tuple[sp.Secret, str]:
        """The variant's report token secret: one left by an interrupted create, else a new one."""
        for row in client.api.secrets(filters={"label": _ours(spec.variant_id)}):
            labels = row["Spec"].get("Labels") or {}
            if labels.get(sp.TOKEN_DIGEST):
                return sp.Secret(id=row["ID"], name=row["Spec"]["Name"]), labels[sp.TOKEN_DIGEST]
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        name = f"{sp.service_name(spec)[:50]}-{secrets.token_hex(4)}"
        labels = {
            sp.INSTANCE: settings.KILN_INSTANCE_ID,
            sp.VARIANT_ID: str(spec.variant_id),
            sp.TOKEN_DIGEST: digest,
        }
        created = client.api.create_secret(name, token.encode(), labels=labels)
        return sp.Secret(id=str(created["ID"]), name=name), digest

    def _login(self, client: docker.DockerClient) -> None:
        """Give the client the registry's credentials once: they go with every service create and update."""
        if not settings.KILN_DOCKER_REGISTRY_USERNAME or id(client) in self._logged_in:
            return
        client.login(
            username=settings.KILN_DOCKER_REGISTRY_USERNAME,
            password=settings.KILN_DOCKER_REGISTRY_PASSWORD,
            registry=registry_of(settings.KILN_DOCKER_IMAGE_REPOSITORY),
        )
        self._logged_in.add(id(client))


class _Nodes:
    """The swarm's nodes by id: a name (the hostname; with the id when hostnames repeat), an address."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.by_id = {str(n["ID"]): n for n in nodes}
        hostnames = [_hostname(n) for n in nodes]
        self.repeated = {h for h in hostnames if hostnames.count(h) > 1}

    def name(self, node_id: str) -> str:
        node = self.by_id.get(node_id)
        if node is None:
            return node_id[:12]
        host = _hostname(node)
        return f"{host}/{node_id[:12]}" if host in self.repeated else host

    def address(self, node_id: str) -> str:
        node = self.by_id.get(node_id) or {}
        label = ((node.get("Spec") or {}).get("Labels") or {}).get("kiln.address", "")
        addr = str((node.get("Status") or {}).get("Addr") or "")
        if not label and addr in ("", "0.0.0.0"):  # noqa: S104 - a manager may show this: use its advertised one
            addr = str((node.get("ManagerStatus") or {}).get("Addr") or "").rpartition(":")[0]
        return label or addr

    def state(self, node_id: str) -> str:
        return str(((self.by_id.get(node_id) or {}).get("Status") or {}).get("State") or "")


def _replica(task: dict[str, Any], nodes: _Nodes) -> Replica:
    status = task.get("Status") or {}
    state, desired = str(status.get("State") or ""), str(task.get("DesiredState") or "")
    labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
    node_id = str(task.get("NodeID") or "")
    ended, died, error = state in ENDED, state in DIED, str(status.get("Err") or "")
    if not ended and node_id and nodes.state(node_id) in _NODE_GONE and state not in ("new", "pending"):
        ended, died = True, True
        error = f"its node {nodes.name(node_id)} is {nodes.state(node_id)}"
    elif died:
        code = (status.get("ContainerStatus") or {}).get("ExitCode")
        error = (
            f"the task {state}"
            + (f" with exit code {code}" if code else "")
            + (f": {error}" if error else "")
        )
    version = str(labels.get("kiln.version") or "0")
    return Replica(
        handle=str(task["ID"]),
        slot=int(task.get("Slot") or 0),
        spec_hash=str(labels.get(sp.SPEC) or ""),
        version=int(version) if version.isdigit() else 0,
        node=nodes.name(node_id) if node_id else "",
        address=nodes.address(node_id) if node_id else "",
        running=state == "running" and not ended,
        stopping=desired in ("shutdown", "remove") and not ended,
        ended=ended,
        died=died,
        error=error,
        created_at=_timestamp(str(task.get("CreatedAt") or "")),
    )


def _ours(variant_id: int | None = None) -> list[str]:
    labels = [f"{sp.INSTANCE}={settings.KILN_INSTANCE_ID}"]
    return labels if variant_id is None else [*labels, f"{sp.VARIANT_ID}={variant_id}"]


def _replicas(service: dict[str, Any]) -> int:
    return int(((service["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas") or 0)


def _hostname(node: dict[str, Any]) -> str:
    return str(((node.get("Description") or {}).get("Hostname")) or node.get("ID", "")[:12])


def _timestamp(text: str) -> float:
    """An Engine API time (RFC 3339 with nanoseconds) as seconds since the epoch; 0 when unreadable."""
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0
