"""Worker images as data: find or enqueue the image a variant needs, build it in Celery, fail, sweep.

One ``WorkerImage`` row per (ONNX digest, flavour, worker code hash, base image): the reconcile
loop asks ``image_for_variant`` for the tag to run and, when the row is new, a build job is
enqueued; the same version with unchanged worker code is never built twice. The row is the truth
and the Celery message only a trigger: ``IMAGE_JOB`` is the shared row-job state machine
(``config.jobs.RowJob``): a job claims the row with its attempt id (``queued``, or ``building`` with a
silent heartbeat after its worker died), so a redelivered message resumes and a duplicate does
nothing. While a version's new image builds, a ready image of the same version (older worker code)
keeps serving. This module holds the rows only: every call to the engine is in
``deployments.backends.docker_images``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from config import dispatch
from config.jobs import RowJob, StaleCause
from deployments import image_build
from deployments.backends import uses_images
from deployments.backends.docker_images import Recipe, build_or_reuse
from deployments.errors import ImageBuildError, InvalidDeploymentError
from deployments.models import Deployment, ImageFlavour, ImageStatus, Variant, WorkerImage
from deployments.services.events import enqueue_reconcile, record_deployment_event
from registry import storage
from registry.audit import Actor
from registry.models import ModelVersion

logger = logging.getLogger(__name__)
MAX_BUILD_TRIES = 3
LOG_MAX_CHARS = 200_000

IMAGE_JOB = RowJob(
    model=WorkerImage,
    queued=ImageStatus.QUEUED,
    running=ImageStatus.BUILDING,
    done=ImageStatus.READY,
    failed=ImageStatus.FAILED,
    lease_s=lambda: float(settings.KILN_IMAGE_BUILD_LEASE_S),
    deadline_s=lambda: float(settings.KILN_IMAGE_BUILD_TIMEOUT_S) + 120,
    max_tries=lambda: MAX_BUILD_TRIES,
)


def image_flavour(variant: Variant) -> str:
    return ImageFlavour.GPU if variant.gpu_ids else ImageFlavour.CPU


def base_image_for(flavour: str) -> str:
    base: str = (
        settings.KILN_DOCKER_GPU_BASE_IMAGE
        if flavour == ImageFlavour.GPU
        else settings.KILN_DOCKER_BASE_IMAGE
    )
    return base


def _enqueue(image_id: int, attempt: uuid.UUID | None) -> None:
    if attempt is not None:
        dispatch.send_on_commit("deployments.build_worker_image", image_id, str(attempt))


def ensure_worker_image(*, version: ModelVersion, flavour: str) -> WorkerImage:
    """The image row for this version, flavour and worker code, in whatever state; new rows get a build."""
    code_hash = image_build.worker_code_hash(flavour)
    base = base_image_for(flavour)
    key = hashlib.sha256(f"{version.onnx_sha256}|{flavour}|{code_hash}|{base}".encode()).hexdigest()
    repository = f"{settings.KILN_DOCKER_IMAGE_REPOSITORY}/{version.model.name}"
    image, created = WorkerImage.objects.get_or_create(
        key=key,
        defaults={
            "version": version,
            "flavour": flavour,
            "worker_code_hash": code_hash,
            "base_image": base,
            "tag": f"{repository}:v{version.version}-{flavour}-{key[:12]}",
            "attempt": uuid.uuid4(),
            "step": "waiting for a build worker",
        },
    )
    if created:
        logger.info("worker image %s requested", image.tag)
        _enqueue(image.pk, image.attempt)
    return image


def image_for_variant(*, variant: Variant) -> tuple[str | None, WorkerImage]:
    """The tag a variant's new workers run now (None: wait for the build), and the image it wants."""
    flavour = image_flavour(variant)
    wanted = ensure_worker_image(version=variant.version, flavour=flavour)
    if wanted.status == ImageStatus.READY:
        return wanted.tag, wanted
    current_still_fits = (
        variant.image
        and variant.image != wanted.tag
        and WorkerImage.objects.filter(
            tag=variant.image, version_id=variant.version_id, flavour=flavour, status=ImageStatus.READY
        ).exists()
    )
    return (variant.image if current_still_fits else None), wanted


def latest_image_of(variant: Variant) -> WorkerImage | None:
    """The image last requested for the variant's version and flavour (prefetched by the queries)."""
    flavour = image_flavour(variant)
    images = getattr(variant.version, "images_newest_first", None)
    if images is None:
        return variant.version.worker_images.filter(flavour=flavour).order_by("-created_at", "-id").first()
    return next((i for i in images if i.flavour == flavour), None)


# -- building ------------------------------------------------------------------------------------
def _claim(image_id: int, attempt: str) -> WorkerImage | None:
    if not IMAGE_JOB.claim(image_id, attempt, step="starting", error=""):
        return None
    return WorkerImage.objects.select_related("version__model").get(pk=image_id)


class _Progress:
    """The build's log, progress and heartbeat, written to the row (throttled) while the attempt owns it."""

    def __init__(self, image: WorkerImage, attempt: str) -> None:
        self.image = image
        self.attempt = attempt
        self.lines: list[str] = [image.log] if image.log else []
        self.size = len(image.log)
        self.fields: dict[str, Any] = {}
        self.last_write = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"image-{image.pk}-heartbeat", daemon=True)

    def _beat(self) -> None:
        try:
            while not self.stop.wait(max(1.0, settings.KILN_IMAGE_BUILD_LEASE_S / 4)):
                IMAGE_JOB.heartbeat(self.image.pk, self.attempt)
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> _Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.flush()

    def log(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size > 2 * LOG_MAX_CHARS:
            self.lines = ["--- (older lines dropped)", self.text()]
            self.size = len(self.lines[1])
        self._maybe_flush()

    def set(self, progress: int, step: str) -> None:
        self.fields.update(progress=max(0, min(progress, 99)), step=step[:200])
        self.log(f"--- {step}")

    def text(self) -> str:
        return "\n".join(self.lines)[-LOG_MAX_CHARS:]

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last_write >= 1.0:
            self.flush()

    def flush(self) -> None:
        IMAGE_JOB.heartbeat(self.image.pk, self.attempt, log=self.text(), **self.fields)
        self.last_write = time.monotonic()


def build_worker_image(*, image_id: int, attempt: str) -> WorkerImage | None:
    """Claim and build one image (or find it on the engine already); None when another job owns it."""
    image = _claim(image_id, attempt)
    if image is None:
        logger.info("worker image %s attempt %s: nothing to do", image_id, attempt)
        return None
    recipe = _recipe(image)
    try:
        with _Progress(image, attempt) as progress:
            built = build_or_reuse(
                recipe,
                progress,
                timeout_s=settings.KILN_IMAGE_BUILD_TIMEOUT_S,
                wheelhouse_root=Path(settings.KILN_WHEELHOUSE_DIR),
            )
            return _mark_ready(image, image_id=built.image_id, reused=built.reused, log=progress.text())
    except ImageBuildError as exc:
        fail_worker_image(image_id=image.pk, attempt=attempt, reason=exc.message, code=exc.code)
    return WorkerImage.objects.get(pk=image.pk)


def _recipe(image: WorkerImage) -> Recipe:
    version = image.version
    return Recipe(
        key=image.key,
        tag=image.tag,
        flavour=image.flavour,
        base_image=image.base_image,
        worker_code_hash=image.worker_code_hash,
        onnx_path=storage.resolve(version.onnx_path),
        model_name=version.model.name,
        model_version=version.version,
        model_sha256=version.onnx_sha256,
        signature=version.signature,
    )


def _mark_ready(image: WorkerImage, *, image_id: str, reused: bool, log: str) -> WorkerImage:
    """Ready, when the claimed attempt (``image.attempt``) still owns the row; users reconcile to it."""
    done = IMAGE_JOB.complete(
        image.pk,
        str(image.attempt),
        image_id=image_id,
        reused=reused,
        progress=100,
        step="reused the engine's image" if reused else "built",
        log=log,
    )
    if done:
        logger.info("worker image %s is ready (%s)", image.tag, "reused" if reused else "built")
        _count_outcome(image_id=image.pk, outcome="succeeded")
        _reconcile_users(image)
    return WorkerImage.objects.get(pk=image.pk)


def _reconcile_users(image: WorkerImage) -> None:
    for deployment in Deployment.objects.filter(variants__version_id=image.version_id).distinct():
        enqueue_reconcile(deployment)


def fail_worker_image(*, image_id: int, attempt: str | None, reason: str, code: str = "failed") -> bool:
    """Mark a build failed with a readable reason (``attempt`` None: whichever attempt holds it).

    ``code`` is the short cause (``build_error``, ``timeout``...), counted in
    ``kiln_image_build_failures_total{reason}``.
    """
    failed = IMAGE_JOB.fail(image_id, attempt, error=reason[:4000], step="failed")
    if failed:
        image = WorkerImage.objects.get(pk=image_id)
        logger.warning("worker image %s failed: %s", image.tag, reason)
        _count_outcome(image_id=image_id, outcome="failed", code=code)
        _reconcile_users(image)
    return failed


def _count_outcome(*, image_id: int, outcome: str, code: str = "") -> None:
    """An ended build in the platform's metrics, timed from its start (None when it never started)."""
    from config.metrics.events import record_image_build

    started, finished = WorkerImage.objects.values_list("started_at", "finished_at").get(pk=image_id)
    duration = (finished - started).total_seconds() if started and finished else None
    record_image_build(outcome=outcome, duration_s=duration, reason=code)


@transaction.atomic
def rebuild_worker_image(*, variant: Variant, actor: Actor) -> WorkerImage:
    """Build a variant's failed image again (or one the engine lost); a ready or running build is kept."""
    image = latest_image_of(variant)
    if image is None or not uses_images(variant.backend):
        raise InvalidDeploymentError(f"variant {variant.name!r} has no worker image to rebuild")
    locked = WorkerImage.objects.select_for_update().get(pk=image.pk)
    if locked.status in (ImageStatus.QUEUED, ImageStatus.BUILDING):
        return locked
    _requeue(locked, "waiting for a build worker")
    record_deployment_event(
        actor=actor,
        action="variant.image_rebuild",
        deployment=variant.deployment,
        after={"variant": variant.name, "image": locked.tag},
    )
    _enqueue(locked.pk, locked.attempt)
    return locked


def forget_missing_image(*, tag: str) -> None:
    """The engine lost a ready image (removed by hand, another engine): build it again."""
    with transaction.atomic():
        for image in WorkerImage.objects.select_for_update().filter(tag=tag, status=ImageStatus.READY):
            _requeue(image, "the engine no longer has this image; waiting for a build worker")
            _enqueue(image.pk, image.attempt)


def _requeue(image: WorkerImage, step: str) -> None:
    """Back to the queue as a new attempt, with nothing left of the last build (its clock included)."""
    IMAGE_JOB.restart(image)
    image.progress, image.step, image.error, image.log = 0, step, "", ""
    image.reused, image.image_id, image.finished_at = False, "", None
    image.save()


def sweep_image_builds() -> dict[str, int]:
    """Resume builds whose worker went silent, re-send lost triggers, fail builds out of tries or time."""
    return IMAGE_JOB.sweep(lock="deployments.sweep_image_builds", send=_send_again, fail=_fail_stale)


def _send_again(image: WorkerImage) -> None:
    _enqueue(image.pk, image.attempt)


def _fail_stale(image: WorkerImage, cause: StaleCause) -> bool:
    if cause == "timeout":
        limit = settings.KILN_IMAGE_BUILD_TIMEOUT_S
        reason = f"the build did not finish within {limit:.0f} s ({image.step})"
    else:
        reason = (
            f"the build was interrupted {image.tries} times (its worker stopped); last step: {image.step}"
        )
    return fail_worker_image(image_id=image.pk, attempt=None, reason=reason, code=cause)
