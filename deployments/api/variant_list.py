"""The variants of a new deployment as a list with its bounds: 1 to ``MAX_VARIANTS``, checked with the
service's own message and published in the schema (minItems, maxItems) for generated clients."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers

from deployments.services.deployments import MAX_VARIANTS, variants_count_refusal


class VariantList(serializers.ListSerializer[Any]):
    """Variants, 1 to ``MAX_VARIANTS`` (the schema publishes both bounds): too many is a 400 that counts
    them as the service does, not the 413 of a field over its size."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, list) and (refusal := variants_count_refusal(len(data))):
            raise serializers.ValidationError(refusal, code="count")
        return super().to_internal_value(data)


class VariantListSchema(OpenApiSerializerFieldExtension):  # type: ignore[no-untyped-call]
    """``VariantList`` in the schema: an array of variants with its bounds (minItems, maxItems)."""

    target_class = VariantList

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        items = auto_schema._map_serializer_field(self.target.child, direction)
        return {"type": "array", "items": items, "minItems": 1, "maxItems": MAX_VARIANTS}
