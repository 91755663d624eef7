"""Reads of deployments with their joins set once."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from deployments.errors import DeploymentNotFoundError, VariantNotFoundError
from deployments.models import LIVE_WORKER_STATES, Deployment, Variant, Worker, WorkerImage, WorkerState

VISIBLE_WORKER_STATES = (*LIVE_WORKER_STATES, WorkerState.DRAINING, WorkerState.FAILED)


def deployments() -> QuerySet[Deployment]:
    """Deployments with model, variants (and their versions) and visible workers."""
    workers = Worker.objects.filter(state__in=VISIBLE_WORKER_STATES).select_related("version").order_by("id")
    images = WorkerImage.objects.order_by("-created_at", "-id")
    variants = (
        Variant.objects.select_related("version", "pinned_version")
        .prefetch_related(
            Prefetch("workers", queryset=workers, to_attr="visible_workers"),
            Prefetch("version__worker_images", queryset=images, to_attr="images_newest_first"),
        )
        .order_by("id")
    )
    return Deployment.objects.select_related("model", "created_by").prefetch_related(
        Prefetch("variants", queryset=variants)
    )


def get_deployment(name: str) -> Deployment:
    deployment = deployments().filter(name=name).first()
    if deployment is None:
        raise DeploymentNotFoundError(f"no deployment named {name!r}")
    return deployment


def get_variant(deployment_name: str, variant_name: str) -> Variant:
    variant = (
        Variant.objects.select_related("deployment__model", "version")
        .filter(deployment__name=deployment_name, name=variant_name)
        .first()
    )
    if variant is None:
        get_deployment(deployment_name)
        raise VariantNotFoundError(f"deployment {deployment_name!r} has no variant {variant_name!r}")
    return variant
