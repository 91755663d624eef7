"""HTTP/1.1 on httptools and an asyncio protocol (uvloop when installed).

Chosen by measurement over uvicorn with a raw ASGI app (bench/RESULTS.md):
with no ASGI scope dicts, receive/send coroutines or task per request, the
same routes answer the small-model benchmark markedly faster. Limits are
enforced while reading: request line and headers (``max_header_bytes``),
``Content-Length`` before the body arrives and the body as it arrives
(``max_body_bytes``). A connection handles one request at a time; pipelined
requests wait, with reading paused, and a client that does not read its
responses stops being read. Idle keep-alive connections and requests that
trickle in too slowly are closed by a sweep every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from http import HTTPStatus
from typing import Any

import httptools

from inference_worker.config import Limits
from inference_worker.errors import PayloadTooLarge
from inference_worker.http_api import HttpApi, Request, Response, error_response, json_response

log = logging.getLogger("inference_worker.http")

KEEPALIVE_TIMEOUT_S = 75.0
READ_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 4096
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in HTTPStatus
}


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class HttpServer:
    """Listening socket, open connections, drain."""

    def __init__(self, api: HttpApi, limits: Limits) -> None:
        self.api = api
        self.limits = limits
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpConnection(self), host, port, backlog=2048)
        self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        """No new connections; open ones finish their request and close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if not connection.busy and not connection.reading:  # a request half read is answered (503)
                connection.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Close every connection once its responses are written (``timeout`` at most), and the sweeper."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # transports flush their buffers, then report connection_lost
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


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, route, write, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.busy = False
        self.closed = False
        self.reading = False
        self.keep_alive = True
        self.write_paused = False
        self.last_activity = time.monotonic()
        self.pipeline: deque[tuple[Request, bool]] = deque()
        self.head_only = False
        self.request_started = 0.0
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.header_bytes = 0
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.header_length: int | None = None
        self.encoding: bytes | None = None
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
            context = exc.__context__
            if isinstance(context, _Refused):
                self._fail(context.response)
            else:
                log.exception("HTTP callback failed", exc_info=context)
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
    def on_message_begin(self) -> None:
        self.reading = True
        self.request_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_header(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value))
        name = name.lower()
        if name == b"content-length":
            length = int(value) if value.strip().isdigit() else -1
            if length > self.limits.max_body_bytes:
                raise _Refused(error_response(PayloadTooLarge(_too_large(length, self.limits))))
        elif name == b"inference-header-content-length":
            if not value.strip().isdigit():
                raise _Refused(
                    json_response(400, {"error": "Inference-Header-Content-Length must be an integer"})
                )
            self.header_length = int(value)
        elif name == b"content-encoding":
            self.encoding = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.expect_continue:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.max_body_bytes:
            raise _Refused(error_response(PayloadTooLarge(_too_large(self.body_size, self.limits))))
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        parts = self.body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        request = Request(self.parser.get_method(), self.url, body, self.header_length, self.encoding)
        keep_alive = self.parser.should_keep_alive()
        self.reading = False
        self._reset()
        if self.busy or self.write_paused:
            self.pipeline.append((request, keep_alive))
            self.transport.pause_reading()
            return
        self._run(request, keep_alive)

    # -- responses ---------------------------------------------------------------------------
    def _run(self, request: Request, keep_alive: bool) -> None:
        self.busy = True
        self.keep_alive = keep_alive
        self.head_only = request.method == b"HEAD"
        self.server.api.handle(request, self._reply)

    def _reply(self, response: Response) -> None:
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

    def _write(self, response: Response, keep_alive: bool, head_only: bool) -> None:
        parts = response.parts
        length = sum(len(part) for part in parts) if len(parts) != 1 else len(parts[0])
        head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n" % (
            _STATUS.get(response.status, b"HTTP/1.1 %d Unknown\r\n" % response.status),
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

    def _fail(self, response: Response) -> None:
        """A request the parser or a limit refused: answer it and close."""
        if not self.closed and not self.busy:
            self._write(response, keep_alive=False, head_only=False)
        self.close()

    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > self.limits.max_header_bytes:
            message = f"request line and headers exceed {self.limits.max_header_bytes} bytes"
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
        """Close after what is buffered has been written; connection_lost follows."""
        if not self.closed:
            self.closed = True
            self.transport.close()


def _too_large(size: int, limits: Limits) -> str:
    return f"the body of {size} bytes exceeds the limit of {limits.max_body_bytes} bytes"
