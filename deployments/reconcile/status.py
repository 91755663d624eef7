"""A deployment's status, from its workers and what kept its variants from running."""

from __future__ import annotations

from django.db import transaction

from deployments.models import Deployment, DeploymentStatus, Worker, WorkerState
from deployments.reconcile.spec import spec_hash
from deployments.services.events import record_deployment_event


def update_status(deployment: Deployment, problems: dict[int, tuple[bool, str]] | None = None) -> None:
    """Store the status the workers show; ``problems``: per variant, (fatal, why it cannot run)."""
    problems = problems or {}
    variants = [v for v in deployment.variants.all() if v.remove_requested_at is None]
    workers = list(Worker.objects.filter(variant__deployment=deployment).exclude(state=WorkerState.STOPPED))
    reason = ""
    if deployment.delete_requested_at is not None:
        status = DeploymentStatus.DELETING
        busy = sum(1 for w in workers if w.state != WorkerState.FAILED)
        reason = f"being deleted: {busy} worker(s) draining" if busy else "being deleted"
    elif not deployment.desired_running:
        busy = any(w.state != WorkerState.FAILED for w in workers)
        status = DeploymentStatus.STOPPING if busy else DeploymentStatus.STOPPED
    else:
        hashes = {v.pk: spec_hash(v) for v in variants}
        failed = [
            w for w in workers if w.state == WorkerState.FAILED and w.spec_hash == hashes.get(w.variant_id)
        ]
        ready = {
            v.pk: sum(1 for w in workers if w.variant_id == v.pk and w.state == WorkerState.READY)
            for v in variants
        }
        fatal = [text for is_fatal, text in problems.values() if is_fatal]
        if failed or fatal:
            status = DeploymentStatus.FAILED
            reason = failed[-1].last_error if failed else fatal[0]
        elif all(ready[v.pk] >= v.replicas for v in variants):
            status = DeploymentStatus.SERVING
        elif any(ready.values()):
            status = DeploymentStatus.DEGRADED
        else:
            status, reason = DeploymentStatus.DEPLOYING, "; ".join(text for _, text in problems.values())
    if (deployment.status, deployment.status_reason) != (status, reason):
        with transaction.atomic():
            Deployment.objects.filter(pk=deployment.pk).update(status=status, status_reason=reason[:4000])
            announced = None
            if status == DeploymentStatus.FAILED:
                announced = ("deployment.failed", reason[-2000:])
            elif status == DeploymentStatus.DEGRADED and deployment.status != DeploymentStatus.DEGRADED:
                total = sum(v.replicas for v in variants)
                announced = ("deployment.degraded", f"{sum(ready.values())} of {total} replicas ready")
            if announced is not None:
                record_deployment_event(
                    actor=None,
                    action=announced[0],
                    deployment=deployment,
                    before={"status": deployment.status},
                    after={"status": status},
                    reason=announced[1],
                )
        deployment.status, deployment.status_reason = status, reason
