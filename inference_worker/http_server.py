"""The worker's HTTP/1.1 server: the shared connection handling (``http_base``) and the OIP routes.

The worker reads two headers of its own: ``Inference-Header-Content-Length`` (the binary
tensor extension) and ``Content-Encoding``; ``Content-Length`` is checked against the body
limit before the body arrives.
"""

from __future__ import annotations

from inference_worker import http_base
from inference_worker.config import Limits
from inference_worker.http_api import HttpApi, Request, Response, json_response


class HttpServer(http_base.Server[Request, Response]):
    """Listening socket, open connections, drain; requests go to the routes of ``api``."""

    def __init__(self, api: HttpApi, limits: Limits) -> None:
        super().__init__(
            api.handle, max_header_bytes=limits.max_header_bytes, max_body_bytes=limits.max_body_bytes
        )

    def connection(self) -> HttpConnection:
        return HttpConnection(self)


class HttpConnection(http_base.Connection[Request, Response]):
    """One client connection of the worker."""

    def _reset(self) -> None:
        super()._reset()
        self.header_length: int | None = None
        self.encoding: bytes | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.max_header_bytes:
            self.count_header(0)
        if self.in_trailers:
            return  # a chunked body's trailer field: counted, never read or passed on
        name = name.lower()
        if name == b"content-length":
            self.check_length(value)
        elif name == b"inference-header-content-length":
            if not value.strip().isdigit():
                raise http_base.Refused(self.error(400, "Inference-Header-Content-Length must be an integer"))
            self.header_length = int(value)
        elif name == b"content-encoding":
            self.encoding = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def request(self, method: bytes, body: bytes) -> Request:
        return Request(method, self.url, body, self.header_length, self.encoding)

    def error(self, status: int, message: str) -> Response:
        return json_response(status, {"error": message})

    def write(self, response: Response, keep_alive: bool, head_only: bool) -> None:
        parts = response.parts
        length = sum(len(part) for part in parts) if len(parts) != 1 else len(parts[0])
        head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n" % (
            http_base.status_line(response.status),
            response.content_type,
            length,
        )
        if response.header_length is not None:
            head += b"Inference-Header-Content-Length: %d\r\n" % response.header_length
        for name, value in response.headers:
            head += b"%s: %s\r\n" % (name, value)
        head += b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"
        if head_only:
            self.transport.write(head)
        elif len(parts) == 1 and length < 65536:
            self.transport.write(head + parts[0])
        else:
            self.transport.writelines([head, *parts])
