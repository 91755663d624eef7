"""Pagination for every API list: ``?page=N&page_size=M`` (at most 500), or a keyset ``?cursor=``.

Lists whose table grows without bound (versions, audit events, reports) name a
``cursor_ordering`` on their view; there ``?cursor=`` (empty for the first page)
pages by keyset: no count, no OFFSET, so page 1,000 costs what page 1 does. The
answer has the same shape in both modes; ``count`` is null under a cursor, and
``next``/``previous`` carry the cursor on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination, PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

MAX_PAGE_SIZE = 500


def _whole(request: Request, name: str, maximum: int | None = None, also: tuple[str, ...] = ()) -> None:
    """``?name=`` is absent, one of ``also``, or a whole number from 1 (to ``maximum``); DRF would
    quietly use its default page size for ``page_size=abc`` or -5, clamp 100000 to the maximum (the
    client then counts pages wrong) and answer ``page=abc`` with a 404."""
    raw = request.query_params.get(name)
    if raw is None or raw in also:
        return
    if raw.isascii() and raw.isdigit() and int(raw) >= 1 and (maximum is None or int(raw) <= maximum):
        return
    bounds = "from 1" if maximum is None else f"from 1 to {maximum}"
    if also:
        bounds += f" (or {', '.join(also)})"
    raise ValidationError({name: [f"{raw[:32]!r} is not a whole number {bounds}"]})


class KeysetPagination(CursorPagination):
    """DRF's cursor pagination with the client-chosen, bounded page size of the page mode; a cursor
    this list did not give (not one at all, or a position its ordering field cannot hold) is a 400
    naming ``cursor``, not DRF's 404 or a database error."""

    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE
    model: Any = None

    def paginate_queryset(
        self, queryset: QuerySet[Any, Any] | Sequence[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        self.model = getattr(queryset, "model", None)
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise ValidationError(
                {self.cursor_query_param: ["not a cursor this list gave (follow next)"]}
            ) from None
        if cursor is None or cursor.position is None or self.model is None:
            return cursor
        ordering = self.ordering if isinstance(self.ordering, str) else self.ordering[0]
        field = self.model._meta.get_field(ordering.lstrip("-"))
        try:
            field.to_python(cursor.position)
        except (DjangoValidationError, ValueError, TypeError):
            raise ValidationError(
                {self.cursor_query_param: ["not a cursor this list gave (follow next)"]}
            ) from None
        return cursor


class DefaultPagination(PageNumberPagination):
    """Page-number pagination with a client-chosen, bounded page size; keyset where the view allows."""

    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE
    keyset: KeysetPagination | None = None

    def paginate_queryset(
        self, queryset: QuerySet[Any, Any] | Sequence[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        _whole(request, self.page_size_query_param, self.max_page_size)
        _whole(request, self.page_query_param, also=tuple(self.last_page_strings))
        ordering = getattr(view, "cursor_ordering", None)
        self.keyset = None
        if ordering and KeysetPagination.cursor_query_param in request.query_params:
            self.keyset = KeysetPagination()
            self.keyset.ordering = ordering
            return self.keyset.paginate_queryset(queryset, request, view)
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data: Any) -> Response:
        if self.keyset is None:
            return super().get_paginated_response(data)
        return Response(
            {
                "count": None,
                "next": self.keyset.get_next_link(),
                "previous": self.keyset.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        described = super().get_paginated_response_schema(schema)
        described["properties"]["count"] = {
            "type": "integer",
            "nullable": True,
            "example": 123,
            "description": "rows matching, null when paging by ?cursor=",
        }
        return described

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:  # the bounds _whole enforces
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
            elif parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
        if getattr(view, "cursor_ordering", None):
            parameters.append(
                {
                    "name": KeysetPagination.cursor_query_param,
                    "required": False,
                    "in": "query",
                    "description": "keyset paging: empty for the first page, then follow next",
                    "schema": {"type": "string"},
                }
            )
        return parameters
