"""Who may change a model: its owner, its team, staff. Everyone signed in may read."""

from __future__ import annotations

from typing import Any

from config.errors import PermissionDeniedError
from registry.models import RegisteredModel


def ensure_can_change(user: Any, model: RegisteredModel) -> None:
    """Raise a 403 domain error unless ``user`` may change ``model``."""
    if not model.can_change(user):
        raise PermissionDeniedError(
            f"only the owner of {model.name!r}, its team and staff may change it",
            code="permission_denied",
        )
