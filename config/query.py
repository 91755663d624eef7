"""Query parameters, checked in one place before any view reads them.

Every request (API and web pages) passes ``QueryGuardMiddleware``: a parameter with a NUL
character (PostgreSQL cannot compare against it: a 500), a name or value over
``MAX_QUERY_VALUE_CHARS``, or more parameters than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` gets a 400
naming the parameter, as JSON under /api/ and as the error page elsewhere. What each API view
accepts beyond that is a query serializer (``read_query``), which is also the operation's
OpenAPI parameter list (``extend_schema(parameters=[TheQuery])``), so the schema and the
validation cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest, HttpResponse
from rest_framework import serializers
from rest_framework.request import Request

from config.error_pages import error_response

MAX_QUERY_VALUE_CHARS = 1024


def query_problem(request: HttpRequest) -> tuple[str, str] | None:
    """``(parameter, message)`` for the first query parameter no view should see, or None."""
    try:
        params = request.GET
    except TooManyFieldsSent:
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return "query", f"more than {limit} query parameters"
    for name, values in params.lists():
        label = name.replace("\x00", "\\x00")[:64]
        if "\x00" in name:
            return label, f"{label}: NUL characters are not allowed in a parameter name"
        if len(name) > MAX_QUERY_VALUE_CHARS:
            return label, f"{label}…: a parameter name is limited to {MAX_QUERY_VALUE_CHARS} characters"
        for value in values:
            if "\x00" in value:
                return name, f"{name}: NUL characters are not allowed"
            if len(value) > MAX_QUERY_VALUE_CHARS:
                return name, f"{name}: longer than {MAX_QUERY_VALUE_CHARS} characters"
    return None


class QueryGuardMiddleware:
    """Refuse hostile query strings before any view (or the database) sees them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = query_problem(request)
        if problem is not None:
            name, message = problem
            return error_response(request, 400, message, "invalid", {"fields": {name: [message]}})
        return self.get_response(request)


def read_query(request: Request, serializer_class: type[serializers.Serializer[Any]]) -> dict[str, Any]:
    """The view's query parameters, validated by its query serializer (a 400 names the parameter)."""
    data = serializer_class(data=request.query_params)
    data.is_valid(raise_exception=True)
    return {key: value for key, value in data.validated_data.items() if value not in (None, "")}
