"""The root of every domain error raised by services.

    PlatformError(message, code, extra)        -> HTTP 400 unless a subclass says otherwise
     +-- NotFoundError                          -> 404
     +-- ConflictError                          -> 409
     +-- PermissionDeniedError                  -> 403
     +-- PayloadTooLargeError                   -> 413
     +-- ServiceUnavailableError                -> 503

Apps subclass these in their own ``errors.py``; the API exception handler and
the web views turn them into a message the user can act on.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist


class PlatformError(Exception):
    """A failure the user can act on, with a stable machine-readable code."""

    http_status = 400
    default_code = "invalid"

    def __init__(self, message: str, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.extra = extra or {}


class NotFoundError(PlatformError):
    """The named object does not exist (or the caller may not see it)."""

    http_status = 404
    default_code = "not_found"


class ConflictError(PlatformError):
    """The request clashes with the current state (a duplicate, a wrong status)."""

    http_status = 409
    default_code = "conflict"


class PermissionDeniedError(PlatformError):
    """The caller is known but may not do this."""

    http_status = 403
    default_code = "permission_denied"


def about_field(field: str, message: str) -> dict[str, Any]:
    """The ``extra`` of an error about one field, in a validation error's shape:
    ``{"fields": {field: [message]}}``."""
    return {"fields": {field: [message]}}


class PayloadTooLargeError(PlatformError):
    """A body or file is over its configured limit."""

    http_status = 413
    default_code = "too_large"


class ServiceUnavailableError(PlatformError):
    """A dependency (Redis, Docker, a worker) cannot be reached right now."""

    http_status = 503
    default_code = "unavailable"


def deleted_meanwhile(exc: Exception) -> NotFoundError | None:
    """The 404 for a row another request deleted while this one worked on it (a service's locked
    re-read of it raised ``DoesNotExist``): a race the client can act on, not a server fault."""
    if not isinstance(exc, ObjectDoesNotExist):
        return None
    what = type(exc).__qualname__.partition(".")[0] or "object"
    kind = "".join(f" {c.lower()}" if c.isupper() else c for c in what).strip()
    return NotFoundError(f"the {kind} was deleted by another request meanwhile", code="deleted")
