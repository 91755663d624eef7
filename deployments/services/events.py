"""Audit events and reconcile triggers shared by the deployment services."""

from __future__ import annotations

from typing import Any

from config import dispatch
from deployments.models import Deployment
from registry.audit import Actor, record_event


def record_deployment_event(
    *,
    actor: Actor,
    action: str,
    deployment: Deployment,
    before: Any = None,
    after: Any = None,
    reason: str = "",
) -> None:
    """Audit a change of ``deployment`` (the subject is ``deployment/<name>``)."""
    record_event(
        actor=actor,
        action=action,
        subject=f"deployment/{deployment.name}",
        model=deployment.model,
        before=before,
        after=after,
        reason=reason,
    )


def enqueue_reconcile(deployment: Deployment) -> None:
    """Reconcile ``deployment`` as soon as the transaction commits (beat would, a few seconds later)."""
    dispatch.send_on_commit("deployments.reconcile_deployment", deployment.pk)
