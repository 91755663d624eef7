"""Audit records in words: ``{% audit_change event.before event.after %}``.

The before and after states are JSON; pages show them as short text (``weight 90% → 100%``),
never as Python reprs (``{'primary': {'weight': 100}}``, ``None``, ``True``).
"""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()
MISSING = object()


def words(value: Any) -> str:
    """One JSON value as text: nested objects in parentheses, lists comma-separated."""
    if value is None or value is MISSING:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(
            f"{_label(k)} {words(v)}" if not isinstance(v, dict) else f"{k} ({words(v)})"
            for k, v in value.items()
        )
    if isinstance(value, list):
        return ", ".join(words(v) for v in value) or "none"
    if value == "":
        return "empty"
    return str(value)


def _label(key: Any) -> str:
    return str(key).replace("_", " ")


@register.simple_tag
def audit_change(before: Any, after: Any) -> str:
    """What changed between two states: ``key: old → new`` for each key that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = [*after, *(k for k in before if k not in after)]
        parts = [
            f"{_label(k)}: {words(before.get(k, MISSING))} → {words(after.get(k, MISSING))}"
            for k in keys
            if before.get(k, MISSING) != after.get(k, MISSING)
        ]
        return "; ".join(parts) or f"unchanged ({words(after)})"
    if before is None:
        return words(after)
    if after is None:
        return f"was {words(before)}"
    return f"{words(before)} → {words(after)}"
