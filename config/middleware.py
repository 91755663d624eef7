"""Middleware of the platform: domain errors in web views become error pages; refused bodies are drained."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from config.errors import PlatformError, deleted_meanwhile

logger = logging.getLogger(__name__)


class PlatformErrorMiddleware:
    """A ``PlatformError`` escaping a web view becomes its 4xx page, never a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if gone := deleted_meanwhile(exception):
            logger.warning("%s %s: %s", request.method, request.path, gone.message, exc_info=exception)
            exception = gone
        if not isinstance(exception, PlatformError):
            return None
        return render(
            request,
            "error.html",
            {"message": exception.message, "code": exception.code, "status": exception.http_status},
            status=exception.http_status,
        )


class DrainRequestBodyMiddleware:
    """Read what a refused request left unread, so its client gets the answer, not a reset.

    A view that refuses a body over a limit answers before reading it; a server that then
    closes the connection with bytes still unread makes the kernel send a reset, and the client
    sees a dropped connection instead of the 413. Up to the largest body the platform accepts
    (an upload plus its form fields) is read and discarded; nothing is kept in memory.
    """

    CHUNK = 256 * 1024

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not hasattr(request, "_body"):  # the body was streamed (or not read at all)
            budget = settings.KILN_MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            stream = getattr(request, "_stream", None)
            while stream is not None and budget > 0:
                try:
                    chunk = stream.read(min(self.CHUNK, budget))
                except OSError:  # the client went away
                    break
                if not chunk:
                    break
                budget -= len(chunk)
        return response
