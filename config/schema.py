"""The OpenAPI schema, exact about errors: every operation lists the 4xx/5xx answers it can give.

drf-spectacular documents the success answer of each operation from its serializers. The error
answers all come from one exception handler (``config.exceptions``) with one body shape,
``ErrorOutput``; which statuses an operation can answer follows from what it takes:

- 400: always: a body field or a query parameter is invalid (and every request's query string
  passes ``config.query.QueryGuardMiddleware``, whatever the operation reads);
- 401: always (no or a wrong token); 403: unless it is open to all (not allowed, or CSRF);
- 404: it names an object in its path or (a write) in its body, or it is a paginated list (a page
  past the end);
- 409: it changes something (a duplicate, a wrong state, a busy deployment);
- 413, 415: it reads a body (over a size limit; a media type it does not parse);
- 414: always: the request line (path and query string, percent-encoded) is over gunicorn's limit
  (``config.gunicorn_conf``), which query values each within their ``maxLength`` can still pass;
- 503: it changes something that needs a dependency (Redis, the Docker engine) right now.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import force_instance
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from config.query import MAX_QUERY_VALUE_CHARS

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

ERROR_DESCRIPTIONS = {
    400: "Invalid input: the message names the field or query parameter.",
    401: "No credentials, or a wrong, expired or revoked token.",
    403: "Authenticated, but not allowed to do this.",
    404: "No such object (or a page past the end of a list).",
    409: "The request clashes with the current state.",
    413: "A field or the body is over its size limit; the message names the limit.",
    414: "The request line (path and query string) is too long; the message names the limit.",
    415: "The body's media type is not one this operation reads.",
    503: "A dependency (Redis, the Docker engine) cannot be reached right now; nothing changed.",
}


class ErrorOutput(serializers.Serializer[Any]):
    """Every error answer of the API."""

    message = serializers.CharField(help_text="what is wrong, naming the field, parameter or limit")
    code = serializers.CharField(help_text="stable and machine-readable: invalid, not_found, too_large…")
    extra = serializers.DictField(help_text="details: ``fields`` (messages per field), ``limit``…")


def error_statuses(operation: dict[str, Any], method: str, open_to_all: bool) -> list[int]:
    """The error statuses an operation can answer, from its parameters, body and method."""
    parameters = operation.get("parameters", [])
    names_object = any(p.get("in") == "path" for p in parameters)
    paginated = any(p.get("in") == "query" and p.get("name") == "page" for p in parameters)
    has_body = "requestBody" in operation
    statuses = [400, 401, 414]
    if not open_to_all:
        statuses.append(403)
    if names_object or paginated or method in WRITES:
        statuses.append(404)
    if method in WRITES:
        statuses.extend((409, 503))
    if has_body:
        statuses.extend((413, 415))
    return sorted(statuses)


class PlatformSchema(AutoSchema):
    """drf-spectacular's schema plus the error answers every operation really gives."""

    def map_parsers(self) -> list[str]:
        """One media type per request body: JSON, or multipart where a field is a file (an upload).

        The views still parse forms (``curl -d a=b``), but a schema that offers JSON, a form and
        multipart for one body makes generated clients send it as all three: openapi-python-client's
        then posts multipart, and cannot send a nested object (a deployment's variants) at all."""
        media_types: list[str] = super().map_parsers()
        serializer = force_instance(self.get_request_serializer())  # type: ignore[no-untyped-call]
        fields = serializer.fields if isinstance(serializer, serializers.Serializer) else {}
        uploads = any(isinstance(field, serializers.FileField) for field in fields.values())
        wanted = "multipart/form-data" if uploads else "application/json"
        return [wanted] if wanted in media_types else media_types

    def _map_serializer(self, serializer: Any, direction: str, bypass_extensions: bool = False) -> Any:
        """A request body that refuses unknown fields says so: ``additionalProperties: false``."""
        component = super()._map_serializer(serializer, direction, bypass_extensions)  # type: ignore[no-untyped-call]
        refused = getattr(force_instance(serializer), "unknown_fields_refused", False)  # type: ignore[no-untyped-call]
        if direction == "request" and refused and isinstance(component, dict):
            component["additionalProperties"] = False
        return component

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        permissions = getattr(self.view, "permission_classes", [])
        open_to_all = bool(permissions) and all(p is AllowAny for p in permissions)
        for parameter in operation.get("parameters", []):
            schema = parameter.get("schema", {})
            if parameter.get("in") == "query" and schema.get("type") == "string" and "enum" not in schema:
                schema.setdefault("maxLength", MAX_QUERY_VALUE_CHARS)  # the guard's limit
        responses = operation["responses"]
        for status in error_statuses(operation, self.method, open_to_all):
            if str(status) not in responses:
                response = self._get_response_for_code(ErrorOutput, str(status))  # type: ignore[no-untyped-call]
                responses[str(status)] = {**response, "description": ERROR_DESCRIPTIONS[status]}
        operation["responses"] = dict(sorted(responses.items()))
        return operation
