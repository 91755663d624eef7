"""One reconcile pass over a deployment, or over all of them; finishing deletions and removals."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from config.locks import advisory_lock
from deployments.backends import BackendError, get_backend, owns_placement
from deployments.models import BUSY_WORKER_STATES, Deployment, Variant
from deployments.reconcile.cleanup import stop_orphans
from deployments.reconcile.service import ServiceReconciler
from deployments.reconcile.status import update_status
from deployments.reconcile.variant import VariantReconciler
from deployments.services.alias_moves import follow_pending
from deployments.services.deployments import describe_variant
from deployments.services.events import record_deployment_event
from deployments.services.routing import converge_routing_table, publish_routing_table

logger = logging.getLogger(__name__)


def reconcile_all() -> dict[str, int]:
    """Reconcile every deployment, then stop workers nobody wants any more."""
    counts = {"deployments": 0, "changed": 0, "orphans": 0}
    for deployment_id in Deployment.objects.values_list("pk", flat=True):
        counts["deployments"] += 1
        counts["changed"] += int(reconcile_deployment(deployment_id))
    with advisory_lock("deployments.cleanup") as taken:
        if taken:
            counts["orphans"] = stop_orphans()
            converge_routing_table()
            _remember_docker_engine()
    return counts


def _remember_docker_engine() -> None:
    """Let processes without the engine's socket (the web app in compose) validate docker/swarm variants."""
    engines = ("docker", "swarm")
    uses_docker = (
        settings.KILN_DEFAULT_BACKEND in engines or Variant.objects.filter(backend__in=engines).exists()
    )
    if not uses_docker:
        return
    from deployments.backends.docker_engine import engine, remember_engine

    try:
        remember_engine(engine(timeout_s=5).info())
    except Exception as exc:  # no engine: validation in other processes refuses docker variants
        logger.info("the Docker engine does not answer: %s", exc)


def reconcile_deployment(deployment_id: int, *, wait_s: float = 0.0) -> bool:
    """One pass over one deployment; returns whether anything changed.

    A pass already running for it makes this one return at once, or after waiting up to
    ``wait_s`` for it (a pass asked for by a worker's exit must not be lost to a routine one).
    """
    with advisory_lock(f"deployments.reconcile.{deployment_id}", wait_s=wait_s) as taken:
        if not taken:
            return False
        deployment = Deployment.objects.select_related("model").filter(pk=deployment_id).first()
        if deployment is None:
            return False
        changed = False
        if deployment.delete_requested_at is None:
            changed |= bool(follow_pending(deployment))
        problems: dict[int, tuple[bool, str]] = {}  # variant -> (fatal, why it cannot run now)
        for variant in deployment.variants.select_related("version__model").order_by("id"):
            try:
                backend = get_backend(variant.backend)
                reconciler: ServiceReconciler | VariantReconciler = (
                    ServiceReconciler(deployment, variant, backend)
                    if owns_placement(backend)
                    else VariantReconciler(deployment, variant)
                )
                changed |= reconciler.run()
            except BackendError as exc:  # e.g. the engine is down: decide nothing about its workers now
                logger.warning("reconcile of %s skipped: %s", variant, exc.message)
                problems[variant.pk] = (False, f"variant {variant.name}: {exc.message}")
                continue
            if reconciler.problem:
                problems[variant.pk] = (reconciler.problem_fatal, reconciler.problem)
        changed |= finish_removals(deployment)
        if deployment.pk is not None:
            update_status(deployment, problems)
        if changed:
            publish_routing_table()
        return changed


def _busy(variant: Variant) -> bool:
    return variant.workers.filter(state__in=BUSY_WORKER_STATES).exists()


def finish_removals(deployment: Deployment) -> bool:
    """Delete the variants and the deployment whose removal was asked for, once no worker runs for them."""
    changed = False
    variants = list(deployment.variants.select_related("version", "remove_requested_by"))
    for variant in variants:
        if variant.remove_requested_at is None or _busy(variant):
            continue
        with transaction.atomic():
            record_deployment_event(
                actor=variant.remove_requested_by,
                action="variant.removed",
                deployment=deployment,
                before=describe_variant(variant),
            )
            variant.delete()
        changed = True
    if deployment.delete_requested_at is None or any(_busy(v) for v in variants if v.pk is not None):
        return changed
    with transaction.atomic():
        requester = Deployment.objects.select_related("delete_requested_by").get(pk=deployment.pk)
        record_deployment_event(
            actor=requester.delete_requested_by,
            action="deployment.deleted",
            deployment=deployment,
            before={"variants": [describe_variant(v) for v in variants if v.pk is not None]},
        )
        deployment.delete()
    return True
