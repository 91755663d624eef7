"""Request bodies of the API: a field the endpoint does not know is a 400, not dropped.

DRF ignores keys a serializer has no field for, so a misspelt or read-only field (``replica: 3``,
``descripton``, a version's ``status``) answered 200 and changed nothing, and a client never
learnt why. Every input serializer derives from :class:`Input`; nested ones (a deployment's
variants, their batching) check their own keys, so the message names the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

_FORM_ONLY = frozenset({"csrfmiddlewaretoken"})
"""What a page's form posts beside its fields (a page may validate with an input serializer)."""


class Input(serializers.Serializer[Any]):
    """A request body (or a nested part of one) whose keys must all be fields."""

    unknown_fields_refused = True
    """The schema says so (``additionalProperties: false``, ``config.schema``)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(key) for key in data if key not in self.fields and key not in _FORM_ONLY)
            if unknown:
                known = sorted(name for name, field in self.fields.items() if not field.read_only)
                raise serializers.ValidationError(
                    {unknown[0]: [f"not a field of this request (its fields: {', '.join(known)})"]}
                )
        return super().to_internal_value(data)
