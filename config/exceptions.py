"""One exception handler for the API: every error becomes ``{"message", "code", "extra"}``."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from config.errors import PayloadTooLargeError, PlatformError, deleted_meanwhile

logger = logging.getLogger(__name__)


def _flatten(detail: Any, prefix: str = "") -> list[str]:
    """Turn DRF's nested error detail into ``field: message`` lines."""
    if isinstance(detail, dict):
        lines: list[str] = []
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(key, int):  # a list serializer's errors, by item index
                name = f"{prefix}[{key}]"
            if key == "non_field_errors":
                name = prefix
            lines.extend(_flatten(value, name))
        return lines
    if isinstance(detail, list):
        lines = []
        for index, item in enumerate(detail):
            is_nested = isinstance(item, dict | list)
            lines.extend(_flatten(item, f"{prefix}[{index}]" if is_nested and prefix else prefix))
        return lines
    return [f"{prefix}: {detail}" if prefix else str(detail)]


# Validation codes that mean "too big": the answer is a 413, not a 400.
TOO_LARGE_CODES = frozenset({"max_length", "too_large"})


def request_too_large(exc: Exception) -> PlatformError | None:
    """The 413 for Django's refusals of a body over its limits (they would be HTML 400 pages)."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        message = (
            f"the request's form fields or JSON body are larger than the limit of {limit} bytes "
            "(KILN_MAX_FORM_BYTES; files are limited by KILN_MAX_UPLOAD_BYTES)"
        )
    elif isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        message = f"the request has more than {limit} fields"
    elif isinstance(exc, TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        message = f"the request has more than {limit} files"
    else:
        return None
    return PayloadTooLargeError(message, extra={"limit": limit})


def _codes(codes: Any) -> set[str]:
    if isinstance(codes, dict):
        return set().union(*(_codes(value) for value in codes.values())) if codes else set()
    if isinstance(codes, list):
        return set().union(*(_codes(value) for value in codes)) if codes else set()
    return {str(codes)}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map domain, Django and DRF errors to 4xx JSON; anything else is logged and becomes a 500."""
    if gone := deleted_meanwhile(exc):
        logger.warning("%s: %s", getattr(context.get("request"), "path", "?"), gone.message, exc_info=exc)
    exc = request_too_large(exc) or gone or exc
    if isinstance(exc, PlatformError):
        return Response(
            {"message": exc.message, "code": exc.code, "extra": exc.extra}, status=exc.http_status
        )
    if isinstance(exc, DjangoValidationError):
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
        message = "; ".join(_flatten(errors)) or "invalid input"
        return Response(
            {"message": message, "code": "invalid", "extra": {"fields": errors}},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound(str(exc) or "not found")
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied(str(exc) or None)

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.APIException):
        detail = exc.detail
        code = exc.get_codes() if not isinstance(exc.get_codes(), dict | list) else "invalid"
        fields: Any = detail if isinstance(detail, dict | list) else {}
        message = "; ".join(_flatten(detail)) or str(exc)
        if isinstance(exc, drf_exceptions.ValidationError) and _codes(exc.get_codes()) & TOO_LARGE_CODES:
            # A field over its size limit: 413, whatever else is wrong with the request.
            code, response.status_code = "too_large", status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        response.data = {"message": message, "code": str(code), "extra": {"fields": fields}}
    return response
