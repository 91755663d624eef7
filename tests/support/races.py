"""Races made to happen: another request's change slipped in between a view's read and its write."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import Model


def delete_after_read(monkeypatch: pytest.MonkeyPatch, module: Any, function: str) -> None:
    """Make `module.function` (a read that returns a row for a change) delete that row before the
    caller gets it, as a concurrent request (or the reconcile loop) deleting it meanwhile does."""
    read = getattr(module, function)

    def read_then_lose(*args: Any, **kwargs: Any) -> Model:
        found: Model = read(*args, **kwargs)
        type(found)._default_manager.filter(pk=found.pk).delete()
        return found

    monkeypatch.setattr(module, function, read_then_lose)
