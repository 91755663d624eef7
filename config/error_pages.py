"""Errors outside a DRF view (no route, Django's own refusals, a crash): JSON under /api/, pages elsewhere.

The README promises JSON errors everywhere on the API, so an unknown path under /api/ answers
``{"message", "code", "extra"}`` with a 404 like every other API error, not Django's HTML page.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults


def is_api_path(path: str) -> bool:
    return path.startswith("/api/")


def error_response(request: HttpRequest, status: int, message: str, code: str, extra: Any) -> HttpResponse:
    """The platform's error answer outside a DRF view: JSON on the API, the error page on the web."""
    if is_api_path(request.path):
        return JsonResponse({"message": message, "code": code, "extra": extra}, status=status)
    return render(request, "error.html", {"message": message, "code": code, "status": status}, status=status)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        message = f"no API endpoint at {request.path}; the operations are listed at /api/schema/"
        return JsonResponse({"message": message, "code": "not_found", "extra": {}}, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        message = f"bad request: {exception}" if str(exception) else "bad request"
        return JsonResponse({"message": message, "code": "invalid", "extra": {}}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        message = str(exception) or "you may not do this"
        return JsonResponse({"message": message, "code": "permission_denied", "extra": {}}, status=403)
    return defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        message = "internal error; it was logged for the operators"
        return JsonResponse({"message": message, "code": "server_error", "extra": {}}, status=500)
    return defaults.server_error(request)
