"""The audit trail: one function every app calls to record a change."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser, User

from registry import hooks
from registry.models import AuditEvent, RegisteredModel

Actor = User | AnonymousUser | None


def actor_label(actor: Actor) -> str:
    """A readable name for the actor; background work is ``system``."""
    if isinstance(actor, User):
        return actor.get_username()
    return "system"


def record_event(
    *,
    actor: Actor,
    action: str,
    subject: str,
    model: RegisteredModel | None = None,
    before: Any = None,
    after: Any = None,
    reason: str = "",
) -> AuditEvent:
    """Append one audit event. Call it inside the same transaction as the change it records.

    The apps above hear of it through ``hooks.event_recorded``, in that transaction.
    """
    user = actor if isinstance(actor, User) else None
    event = AuditEvent.objects.create(
        actor=user,
        actor_label=actor_label(actor),
        action=action,
        subject=subject,
        model=model,
        before=before,
        after=after,
        reason=reason[:4000],
    )
    hooks.event_recorded.call(event=event)
    return event
