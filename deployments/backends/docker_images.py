"""Worker images on the Docker engine: find one already built, or build one, and say why it failed.

The image service keeps the row (claim, progress, heartbeat, outcome) and hands this module a
``Recipe`` and somewhere to write the log; everything that talks to the engine is here. An image
carries the label ``kiln.image.key`` (its row's key: model digest, flavour, worker code, base),
so a tag the engine holds is reused only when it is this very image.

Every failure leaves as ``ImageBuildError`` with the short cause as its code, which the service
records and counts: ``build_error`` (the wheelhouse or the Dockerfile failed; the log says where),
``engine_refused`` (the engine answered with an error), ``engine_unavailable``, ``os_error``,
``push_failed`` (the registry refused the image or does not answer), or the code of a
``BackendError`` raised on the way.

When the tag names a registry (``KILN_DOCKER_IMAGE_REPOSITORY=host:port/kiln-worker``), the image
is pushed there once built or found, so every node of a swarm can pull it; with
``KILN_DOCKER_REGISTRY_USERNAME``/``_PASSWORD`` the push logs in.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker.errors
import requests
from django.conf import settings

from deployments import image_build
from deployments.backends.base import BackendError
from deployments.backends.docker_engine import ENGINE_ERRORS, engine, short_error, unavailable
from deployments.errors import ImageBuildError

IMAGE_KEY_LABEL = "kiln.image.key"
_STEP = re.compile(r"^Step (\d+)/(\d+) :")


@dataclass(frozen=True)
class Recipe:
    """Everything an image is made of, read from its row and its version before the build."""

    key: str
    tag: str
    flavour: str
    base_image: str
    worker_code_hash: str
    onnx_path: Path
    model_name: str
    model_version: int
    model_sha256: str
    signature: dict[str, Any]


@dataclass(frozen=True)
class Built:
    """The engine's id of the image, and whether it was there already (same key) rather than built."""

    image_id: str
    reused: bool


class BuildProgress(Protocol):
    """Where the build writes its log lines and its steps (the service throttles them to the row)."""

    def log(self, line: str) -> None: ...

    def set(self, progress: int, step: str) -> None: ...


def build_or_reuse(
    recipe: Recipe, progress: BuildProgress, *, timeout_s: float, wheelhouse_root: Path
) -> Built:
    """The image of ``recipe`` on the engine: the one it holds under the tag, else a fresh build."""
    try:
        client = engine(timeout_s=timeout_s)
        found = _on_engine(client, recipe)
        if found:
            progress.log(
                f"the engine has {recipe.tag} already (same model, worker code and base): reusing it"
            )
            built = Built(image_id=found, reused=True)
        else:
            built = Built(image_id=_build(client, recipe, progress, wheelhouse_root), reused=False)
        if registry_of(recipe.tag):
            progress.set(99, f"pushing to the registry {registry_of(recipe.tag)}")
            push_image(client.api, recipe.tag, log=progress.log)
        return built
    except ImageBuildError as exc:
        if exc.code == "push_failed":
            raise
        raise ImageBuildError(exc.message, code="build_error") from exc
    except BackendError as exc:
        raise ImageBuildError(exc.message, code=exc.code) from exc
    except (docker.errors.APIError, docker.errors.BuildError) as exc:
        raise ImageBuildError(f"the Docker engine refused: {exc}", code="engine_refused") from exc
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ImageBuildError(unavailable(exc).message, code="engine_unavailable") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageBuildError(f"the build failed: {exc}", code="os_error") from exc


def registry_of(name: str) -> str:
    """The registry host an image name or repository starts with ("" for the engine's own names).

    Docker's rule: a first path part with a dot or a port, or ``localhost``, names a registry.
    """
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return ""


def push_image(api: Any, tag: str, *, log: Callable[[str], None]) -> None:
    """Push ``tag`` to its registry, streaming the log; a refusal raises ``ImageBuildError`` (push_failed)."""
    repository, _, version = tag.rpartition(":")
    auth = None
    if settings.KILN_DOCKER_REGISTRY_USERNAME:
        auth = {
            "username": settings.KILN_DOCKER_REGISTRY_USERNAME,
            "password": settings.KILN_DOCKER_REGISTRY_PASSWORD,
        }
    for chunk in api.push(repository, tag=version, auth_config=auth, stream=True, decode=True):
        if "error" in chunk:
            detail = str(chunk.get("errorDetail", {}).get("message") or chunk["error"]).strip()
            log(detail)
            raise ImageBuildError(
                f"pushing {tag} to {registry_of(tag)} failed: {detail[:500]}", code="push_failed"
            )
        status = str(chunk.get("status") or "")
        if status and not chunk.get("progressDetail"):
            log(f"{chunk.get('id', '')}: {status}".strip(": "))


def remove_image(tag: str) -> str:
    """Remove ``tag`` from the engine (the image too when no other tag names it): ``removed``,
    ``absent``, or ``in use`` when a container still runs it (never forced).

    Raises ``BackendError`` when the engine does not answer or refuses for another reason.
    """
    try:
        engine().images.remove(tag)
    except docker.errors.ImageNotFound:
        return "absent"
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            return "in use"
        raise BackendError(f"the Docker engine did not remove {tag}: {short_error(exc)}") from exc
    except ENGINE_ERRORS as exc:
        raise unavailable(exc) from exc
    return "removed"


def _on_engine(client: Any, recipe: Recipe) -> str:
    """The engine's id of ``recipe.tag`` when it is this very image (its key label matches), else ''."""
    try:
        attrs = client.api.inspect_image(recipe.tag)
    except (docker.errors.DockerException, requests.RequestException):
        return ""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return str(attrs["Id"]) if labels.get(IMAGE_KEY_LABEL) == recipe.key else ""


def _build(client: Any, recipe: Recipe, progress: BuildProgress, wheelhouse_root: Path) -> str:
    if not recipe.base_image:
        raise ImageBuildError("GPU images need KILN_DOCKER_GPU_BASE_IMAGE (a CUDA runtime with Python 3.11)")
    progress.set(2, "preparing the wheelhouse (the worker wheel and its pinned requirements)")
    wheelhouse = image_build.prepare_wheelhouse(
        flavour=recipe.flavour,
        root=wheelhouse_root,
        arch=str(client.info().get("Architecture") or "x86_64"),
        log=progress.log,
    )
    progress.set(30, "sending the build context")
    with tempfile.TemporaryDirectory(prefix="kiln-image-") as tmp:
        context = Path(tmp) / "context.tar"
        image_build.write_context(
            path=context,
            flavour=recipe.flavour,
            wheelhouse=wheelhouse,
            onnx_path=recipe.onnx_path,
            model_config={
                "model": recipe.model_name,
                "version": recipe.model_version,
                "sha256": recipe.model_sha256,
                "signature": recipe.signature,
                "flavour": recipe.flavour,
                "worker_version": image_build.worker_version(),
                "worker_code_hash": recipe.worker_code_hash,
            },
        )
        return build_image(
            api=client.api,
            context=context,
            tag=recipe.tag,
            buildargs={
                "BASE_IMAGE": recipe.base_image,
                "MODEL_NAME": recipe.model_name,
                "MODEL_VERSION": str(recipe.model_version),
                "MODEL_SHA256": recipe.model_sha256,
                "WORKER_VERSION": image_build.worker_version(),
                "WORKER_CODE_HASH": recipe.worker_code_hash,
            },
            labels={IMAGE_KEY_LABEL: recipe.key},
            log=progress.log,
            on_step=lambda step, total: progress.set(32 + 66 * step // total, f"build step {step}/{total}"),
        )


def build_image(
    *,
    api: Any,
    context: Path,
    tag: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    log: Callable[[str], None],
    on_step: Callable[[int, int], None],
) -> str:
    """Build ``tag`` on the engine (``api``: docker's low-level client), streaming the log; the image id."""
    image_id = ""
    with context.open("rb") as fileobj:
        stream = api.build(
            fileobj=fileobj,
            custom_context=True,
            tag=tag,
            buildargs=buildargs,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                log(str(detail).rstrip())
                raise ImageBuildError(f"the image build failed: {str(detail).strip()[:500]}")
            text = str(chunk.get("stream") or chunk.get("status") or "")
            for line in text.splitlines():
                log(line)
                if match := _STEP.match(line):
                    on_step(int(match[1]), int(match[2]))
            image_id = str((chunk.get("aux") or {}).get("ID") or image_id)
    return image_id or str(api.inspect_image(tag)["Id"])
