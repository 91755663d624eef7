"""One exception handler for the API: every error becomes ``{"message", "code", "extra"}``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from config.errors import PlatformError

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


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map domain, Django and DRF errors to 4xx JSON; anything else is logged and becomes a 500."""
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
        response.data = {"message": message, "code": str(code), "extra": {"fields": fields}}
    return response
