"""The gateway's client side: HTTP/1.1 on httptools and an asyncio protocol.

It mirrors the worker's ``http_server`` (same limits while reading, one
request at a time per connection with pipelined ones waiting, a sweep closing
idle and too-slow connections) but keeps what a proxy needs and the worker
does not: the end-to-end request headers as raw lines to forward unchanged,
and the routing-key header. Responses are written as one status line, the
header lines the app gives, ``Content-Length`` and the body, in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import httptools
import orjson

log = logging.getLogger("inference_worker.gateway")

KEEPALIVE_TIMEOUT_S = 75.0
READ_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 4096
MAX_HEADER_BYTES = 64 * 1024
JSON_TYPE = b"Content-Type: application/json\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_FORWARD, _DROP, _LENGTH, _EXPECT, _KEY = range(5)
_SPECIAL: dict[bytes, int] = {
    **dict.fromkeys(
        b"host connection keep-alive transfer-encoding te trailer upgrade proxy-connection".split(), _DROP
    ),
    b"proxy-authorization": _DROP,
    b"content-length": _LENGTH,
    b"expect": _EXPECT,
}
"""Request headers the gateway reads, or does not pass on (hop-by-hop ones and the framing it rewrites)."""


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


class GatewayServer:
    """Listening socket, open connections, drain."""

    def __init__(self, app: App, *, max_body_bytes: int, routing_key_header: str) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.special = {**_SPECIAL, routing_key_header.lower().encode("latin-1"): _KEY}
        self.connections: set[GatewayConnection] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GatewayConnection(self), host, port, backlog=2048)
        self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def busy(self) -> int:
        return sum(1 for connection in self.connections if connection.busy)

    def stop_accepting(self) -> None:
        """No new connections; idle ones close, busy ones after their answer."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Close every connection once its responses are written (``timeout`` at most)."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.expire(now)


class GatewayConnection(asyncio.Protocol):
    """One client connection: parse, hand to the app, write its answers in order."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.special = server.special
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.busy = False
        self.closed = False
        self.reading = False
        self.keep_alive = True
        self.head_only = False
        self.write_paused = False
        self.last_activity = time.monotonic()
        self.request_started = 0.0
        self.pipeline: deque[tuple[GatewayRequest, bool]] = deque()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers = b""
        self.routing_key: bytes | None = None
        self.header_bytes = 0
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.expect_continue = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            transport.close()
            self.closed = True
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(json_response(400, {"error": "protocol upgrades are not supported"}))
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._fail(refused.response)
            else:
                log.error("HTTP callback failed", exc_info=refused)
                self._fail(json_response(500, {"error": "internal error while reading the request"}))
        except httptools.HttpParserError as exc:
            self._fail(json_response(400, {"error": f"malformed HTTP request: {exc}"}))

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy:
            self._next()
        if not self.pipeline and not self.closed:
            self.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if not self.reading:  # the first callback of a request (on_message_begin would cost a call more)
            self.reading = True
            self.request_started = time.monotonic()
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > MAX_HEADER_BYTES:
            self._count_header(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            self._count_header(0)
        kind = self.special.get(name.lower(), _FORWARD)
        if kind == _FORWARD:
            self.headers += b"%s: %s\r\n" % (name, value)
        elif kind == _KEY:
            self.routing_key = value
            self.headers += b"%s: %s\r\n" % (name, value)
        elif kind == _LENGTH:
            length = int(value) if value.strip().isdigit() else -1
            if length > self.server.max_body_bytes:
                raise _Refused(_too_large(length, self.server.max_body_bytes))
        elif kind == _EXPECT:
            self.expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        if self.expect_continue:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.server.max_body_bytes:
            raise _Refused(_too_large(self.body_size, self.server.max_body_bytes))
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        parts = self.body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        method = self.parser.get_method()
        request = GatewayRequest(method, self.url, self.headers, body, self.routing_key, time.perf_counter())
        keep_alive = self.parser.should_keep_alive()
        self.reading = False
        self._reset()
        if self.busy or self.write_paused:
            self.pipeline.append((request, keep_alive))
            self.transport.pause_reading()
            return
        self._run(request, keep_alive)

    # -- responses ---------------------------------------------------------------------------
    def _run(self, request: GatewayRequest, keep_alive: bool) -> None:
        self.busy = True
        self.keep_alive = keep_alive
        self.head_only = request.method == b"HEAD"
        self.server.app.handle(request, self._reply)

    def _reply(self, response: GatewayResponse) -> None:
        self.busy = False
        if self.closed:
            return
        keep_alive = self.keep_alive and not self.server.draining
        self._write(response, keep_alive, self.head_only)
        self.last_activity = time.monotonic()
        if not keep_alive:
            self.close()
        elif self.pipeline and not self.write_paused:
            self._next()

    def _next(self) -> None:
        if not self.pipeline:
            return
        request, keep_alive = self.pipeline.popleft()
        if not self.pipeline and not self.write_paused:
            self.transport.resume_reading()
        self._run(request, keep_alive)

    def _write(self, response: GatewayResponse, keep_alive: bool, head_only: bool) -> None:
        body = response.body
        head = b"%s%sContent-Length: %d\r\n%s" % (
            _STATUS.get(response.status) or b"HTTP/1.1 %d Unknown\r\n" % response.status,
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

    def _fail(self, response: GatewayResponse) -> None:
        """A request the parser or a limit refused: answer it and close."""
        if not self.closed and not self.busy:
            self._write(response, keep_alive=False, head_only=False)
        self.close()

    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            message = f"request line and headers exceed {MAX_HEADER_BYTES} bytes"
            raise _Refused(json_response(431, {"error": message}))

    def expire(self, now: float) -> None:
        """Called by the sweep: close idle keep-alive and too-slow connections."""
        if self.busy:
            return
        if self.reading and now - self.request_started > READ_TIMEOUT_S:
            self._fail(json_response(408, {"error": "the request took too long to arrive"}))
        elif not self.reading and now - self.last_activity > KEEPALIVE_TIMEOUT_S:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()


class _Refused(Exception):
    def __init__(self, response: GatewayResponse) -> None:
        self.response = response


def _too_large(size: int, limit: int) -> GatewayResponse:
    return json_response(413, {"error": f"the body of {size} bytes exceeds the limit of {limit} bytes"})
