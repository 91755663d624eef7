"""Worker images that nothing will run again leave the Docker engine, so its disk stays flat.

Two kinds: the images of deleted versions (``forget_images_of``, called as the versions go; their
rows go with them, and the tags are removed after the commit by a Celery job, which has the engine
socket), and superseded images (``prune_superseded_images``, on beat): a ready image of a version
and flavour for which a newer image is ready (the worker code, the base image or the registry
changed since). An image is kept while a variant names its tag; the engine itself refuses to remove
one a container still runs (then the row stays and a later pass tries again). A tag pushed to a
registry (``KILN_DOCKER_IMAGE_REPOSITORY`` names one) leaves the registry too once the engine let go
of it; the registry reclaims the layers with its own ``registry garbage-collect``.
"""

from __future__ import annotations

import logging

from django.db.models import Exists, OuterRef, Q

from config import dispatch
from deployments.backends.base import BackendError
from deployments.backends.docker_images import remove_image
from deployments.backends.registry_api import RegistryUnavailable, delete_from_registry
from deployments.models import ImageStatus, Variant, WorkerImage

logger = logging.getLogger(__name__)
PRUNE_BATCH = 20
"""Superseded images one pass removes at most (the next pass takes the rest)."""


def forget_images_of(*, version_ids: list[int]) -> None:
    """The versions go: once that commits, their images leave the engine (in a Celery job)."""
    tags = sorted(set(WorkerImage.objects.filter(version_id__in=version_ids).values_list("tag", flat=True)))
    if tags:
        dispatch.send_on_commit("deployments.remove_worker_images", tags)


def remove_worker_images(tags: list[str]) -> dict[str, str]:
    """Remove each tag no image row or variant names any more; what became of each.

    A tag the engine refuses for good (not "in use") is logged and left: the other tags still go.
    Raises ``BackendError`` when the engine does not answer, or, once every tag was tried, when a
    container still runs one (it may be draining) or its registry did not answer: the job tries
    again later, and a tag removed before then answers "absent".
    """
    named = set(WorkerImage.objects.filter(tag__in=tags).values_list("tag", flat=True))
    named |= set(Variant.objects.filter(image__in=tags).values_list("image", flat=True))
    outcome: dict[str, str] = {}
    later: list[str] = []
    for tag in tags:
        try:
            outcome[tag] = "kept (still named)" if tag in named else remove_image(tag)
            if outcome[tag] in ("removed", "absent"):
                outcome[tag] = _and_from_its_registry(tag, outcome[tag])
        except RegistryUnavailable as exc:
            later.append(f"{tag} ({exc.message})")
            outcome[tag] = f"removed from the engine; registry: {exc.message}"
        except BackendError as exc:
            if exc.code == "engine_unavailable":
                raise
            outcome[tag] = f"refused: {exc.message}"
            logger.warning("worker image %s stays: %s", tag, exc.message)
            continue
        logger.info("worker image %s: %s", tag, outcome[tag])
    later += sorted(f"{tag} (a container still runs it)" for tag, what in outcome.items() if what == "in use")
    if later:
        raise BackendError(f"not removed yet, tried again later: {', '.join(later)}")
    return outcome


def _and_from_its_registry(tag: str, engine_outcome: str) -> str:
    """The tag leaves its registry too (when it names one); a lasting refusal is logged, not raised."""
    registry = delete_from_registry(tag)
    if not registry:
        return engine_outcome
    if registry.startswith("refused"):
        logger.warning("worker image %s stays in its registry: %s", tag, registry)
    return f"{engine_outcome}; registry: {registry}"


def superseded_images(*, after: WorkerImage | None = None) -> list[WorkerImage]:
    """Ready images that a newer ready image of the same version and flavour replaced and no variant
    names, oldest first: at most ``PRUNE_BATCH``, those after ``after`` in that order."""
    newer = WorkerImage.objects.filter(
        version_id=OuterRef("version_id"),
        flavour=OuterRef("flavour"),
        status=ImageStatus.READY,
        created_at__gt=OuterRef("created_at"),
    )
    named = Variant.objects.exclude(image="").values("image")
    rows = WorkerImage.objects.filter(status=ImageStatus.READY).filter(Exists(newer)).exclude(tag__in=named)
    if after is not None:
        rows = rows.filter(
            Q(created_at__gt=after.created_at) | Q(created_at=after.created_at, id__gt=after.pk)
        )
    return list(rows.order_by("created_at", "id")[:PRUNE_BATCH])


def prune_superseded_images() -> dict[str, int]:
    """Remove superseded images from the engine, and their rows once the engine let go of them.

    A pass asks the engine about ``PRUNE_BATCH`` images (removed or refused), plus those a container
    still runs: there are at most as many of those as containers, and they never keep the pass from
    younger ones.
    """
    counts = {"removed": 0, "in_use": 0, "failed": 0}
    last: WorkerImage | None = None
    while counts["removed"] + counts["failed"] < PRUNE_BATCH:
        page = superseded_images(after=last)
        if not page:
            break
        for image in page:
            last = image
            try:
                outcome = remove_image(image.tag)
                if outcome != "in use":
                    outcome = _and_from_its_registry(image.tag, outcome)
            except BackendError as exc:
                logger.warning("superseded worker image %s stays for now: %s", image.tag, exc.message)
                counts["failed"] += 1
                unreachable = exc.code in ("engine_unavailable", "registry_unavailable")
                if unreachable or counts["removed"] + counts["failed"] >= PRUNE_BATCH:
                    return counts  # the next pass tries again
                continue
            if outcome == "in use":
                counts["in_use"] += 1
                continue
            WorkerImage.objects.filter(pk=image.pk, status=ImageStatus.READY).delete()
            logger.info("superseded worker image %s: %s, its row deleted", image.tag, outcome)
            counts["removed"] += 1
            if counts["removed"] + counts["failed"] >= PRUNE_BATCH:
                break
    return counts
