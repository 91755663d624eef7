"""Turn domain errors raised in web views into an error page with the right status."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from config.errors import PlatformError


class PlatformErrorMiddleware:
    """A ``PlatformError`` escaping a web view becomes its 4xx page, never a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, PlatformError):
            return None
        return render(
            request,
            "error.html",
            {"message": exception.message, "code": exception.code, "status": exception.http_status},
            status=exception.http_status,
        )
