"""The gateway's client side: the shared connection handling (``http_base``) and what a proxy reads.

On top of what the worker's server does it keeps the end-to-end request headers as raw lines
to forward unchanged, and the routing-key header. Responses are written as one status line, the
header lines the app gives, ``Content-Length`` and the body, in one write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from inference_worker import http_base

MAX_HEADER_BYTES = 64 * 1024
JSON_TYPE = b"Content-Type: application/json\r\n"
_FORWARD, _DROP, _LENGTH, _EXPECT, _KEY, _CONNECTION = range(6)
_SPECIAL: dict[bytes, int] = {
    **dict.fromkeys(b"host keep-alive transfer-encoding te trailer upgrade proxy-connection".split(), _DROP),
    b"connection": _CONNECTION,
    b"proxy-authorization": _DROP,
    b"content-length": _LENGTH,
    b"expect": _EXPECT,
}
"""Request headers the gateway reads, or does not pass on (hop-by-hop ones and the framing it
rewrites); so are those a ``Connection`` field names."""


@dataclass(slots=True)
class GatewayRequest:
    """What the server read: method, URL (with query), forwarded header lines, body, routing key."""

    method: bytes
    url: bytes
    headers: bytes
    body: bytes
    routing_key: bytes | None
    received: float
    """``time.perf_counter()`` when the request had been read."""
    client: http_base.Connection[GatewayRequest, GatewayResponse]
    """The connection it came on (``closed`` once the client left)."""


@dataclass(slots=True)
class GatewayResponse:
    """Status, header lines (each ending in CRLF, Content-Type included) and body."""

    status: int
    headers: bytes
    body: bytes


Reply = Callable[[GatewayResponse], None]


class App(Protocol):
    def handle(self, request: GatewayRequest, reply: Reply) -> None: ...


def json_response(status: int, payload: object, headers: bytes = b"") -> GatewayResponse:
    return GatewayResponse(status, JSON_TYPE + headers, orjson.dumps(payload))


class GatewayServer(http_base.Server[GatewayRequest, GatewayResponse]):
    """Listening socket, open connections, drain; requests go to the gateway's ``app``."""

    def __init__(self, app: App, *, max_body_bytes: int, routing_key_header: str) -> None:
        super().__init__(app.handle, max_header_bytes=MAX_HEADER_BYTES, max_body_bytes=max_body_bytes)
        self.special = {**_SPECIAL, routing_key_header.lower().encode("latin-1"): _KEY}

    def connection(self) -> GatewayConnection:
        return GatewayConnection(self)


class GatewayConnection(http_base.Connection[GatewayRequest, GatewayResponse]):
    """One client connection of the gateway."""

    def __init__(self, server: GatewayServer) -> None:
        self.special = server.special
        super().__init__(server)

    def _reset(self) -> None:
        super()._reset()
        self.headers = b""
        self.routing_key: bytes | None = None
        self.hop_by_hop: frozenset[bytes] = frozenset()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.max_header_bytes:
            self.count_header(0)
        if self.in_trailers:
            return  # a chunked body's trailer field: counted, never read or passed on
        kind = self.special.get(name.lower(), _FORWARD)
        if kind == _FORWARD:
            self.headers += b"%s: %s\r\n" % (name, value)
        elif kind == _KEY:
            self.routing_key = value
            self.headers += b"%s: %s\r\n" % (name, value)
        elif kind == _LENGTH:
            self.check_length(value)
        elif kind == _EXPECT:
            self.expect_continue = value.lower() == b"100-continue"
        elif kind == _CONNECTION and value.lower() not in (b"keep-alive", b"close"):
            self.hop_by_hop |= http_base.connection_options(value)

    def request(self, method: bytes, body: bytes) -> GatewayRequest:
        headers = self.headers
        if self.hop_by_hop:
            headers = http_base.without_fields(headers, self.hop_by_hop)
        return GatewayRequest(method, self.url, headers, body, self.routing_key, time.perf_counter(), self)

    def error(self, status: int, message: str) -> GatewayResponse:
        return json_response(status, {"error": message})

    def write(self, response: GatewayResponse, keep_alive: bool, head_only: bool) -> None:
        body = response.body
        head = b"%s%sContent-Length: %d\r\n%s" % (
            http_base.status_line(response.status),
            response.headers,
            len(body),
            b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
        )
        if head_only:
            self.transport.write(head)
        elif len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
