"""HTTP/1.1 serving shared by the worker and the gateway: httptools and an asyncio protocol.

Chosen by measurement over uvicorn with a raw ASGI app (bench/RESULTS.md): with no ASGI
scope dicts, receive/send coroutines or task per request, the same routes answer markedly
faster. Limits are enforced while reading: request line and headers (``max_header_bytes``),
``Content-Length`` before the body arrives and the body as it arrives (``max_body_bytes``).
A connection handles one request at a time; pipelined requests wait, with reading paused, and
a client that does not read its responses stops being read. Answers leave in the order of the
requests: a refused request (malformed, over a limit) is answered after the ones before it, then
the connection closes, lingering so the client reads the answer instead of a reset; a ``100
Continue`` waits for the answers before it. A chunked body's trailer fields are counted against the
header limit and otherwise ignored (``in_trailers``). ``Upgrade`` and ``CONNECT`` are refused with
a 400 before anything runs. Idle keep-alive connections and requests that trickle in too slowly
are closed by a sweep every few seconds.

A server subclasses :class:`Connection` for what its requests carry (the headers it reads,
the request and response types, how a response is written) and :class:`Server` for what the
connections hand their requests to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import httptools

log = logging.getLogger("inference_worker.http")

KEEPALIVE_TIMEOUT_S = 75.0
"""Longer than clients keep an idle pooled connection (httpx 5 s, load balancers up to 60 s)."""
READ_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 4096
LINGER_S = 2.0
"""After a refusal, how long what the client still sends is read and dropped before the close
(closing on unread data resets the connection, and the client would lose the answer)."""
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
UPGRADE_REFUSED = "protocol upgrades (Upgrade, CONNECT) are not supported: send plain HTTP/1.1"
STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


def connection_options(value: bytes) -> frozenset[bytes]:
    """The header names a ``Connection`` field lists (lowercase): hop-by-hop, never passed on."""
    return frozenset(token.strip().lower() for token in value.split(b",")) - {b"", b"close"}


def without_fields(lines: bytes, names: frozenset[bytes]) -> bytes:
    """Header ``lines`` (each ending in CRLF) without the fields ``names`` names (lowercase)."""
    kept = [line for line in lines.split(b"\r\n") if line and line.split(b":", 1)[0].lower() not in names]
    return b"".join(line + b"\r\n" for line in kept)


class Refused(Exception):
    """Raised in a parser callback: the request is answered with ``response`` and the connection closed."""

    def __init__(self, response: Any) -> None:
        self.response = response


class Server(Generic[RequestT, ResponseT]):
    """Listening socket, open connections, drain. Subclasses make the connections."""

    def __init__(
        self,
        handle: Callable[[RequestT, Callable[[ResponseT], None]], None],
        *,
        max_header_bytes: int,
        max_body_bytes: int,
    ) -> None:
        self.handle = handle
        """Answers a request through its reply callback (the routes, the gateway's app)."""
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.connections: set[Connection[RequestT, ResponseT]] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def connection(self) -> Connection[RequestT, ResponseT]:
        raise NotImplementedError

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.connection, host, port, backlog=2048)
        self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def busy(self) -> int:
        return sum(1 for connection in self.connections if connection.busy)

    def stop_accepting(self) -> None:
        """No new connections; idle ones close, the others after their answer."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if not connection.busy and not connection.reading:  # a request half read is answered
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


class Connection(asyncio.Protocol, Generic[RequestT, ResponseT]):
    """One client connection: parse, hand to the server, write its answers in order.

    Subclasses define ``on_header``, :meth:`request`, :meth:`write` and :meth:`error`, and may
    extend :meth:`_reset` with the per-request state their headers fill in.
    """

    def __init__(self, server: Server[RequestT, ResponseT]) -> None:
        self.server = server
        self.max_header_bytes = server.max_header_bytes
        self.max_body_bytes = server.max_body_bytes
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
        self.pipeline: deque[tuple[RequestT, bool, bool]] = deque()
        self.final: ResponseT | None = None
        """The answer to a refused request, owed once the answers before it are written."""
        self.continue_owed = False
        self._in_next = False
        self._reset()

    # -- what a subclass provides ------------------------------------------------------------
    def request(self, method: bytes, body: bytes) -> RequestT:
        """The request read so far (URL, the headers' state, ``method`` and ``body``)."""
        raise NotImplementedError

    def write(self, response: ResponseT, keep_alive: bool, head_only: bool) -> None:
        raise NotImplementedError

    def error(self, status: int, message: str) -> ResponseT:
        raise NotImplementedError

    def _reset(self) -> None:
        self.url = b""
        self.header_bytes = 0
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.expect_continue = False
        self.in_trailers = False

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
        if self.closed or self.final is not None:
            return  # refused: what the client still sends is dropped
        self.last_activity = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(self.error(400, UPGRADE_REFUSED))
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, Refused):
                self._fail(refused.response)
            else:
                log.error("HTTP callback failed", exc_info=refused)
                self._fail(self.error(500, "internal error while reading the request"))
        except httptools.HttpParserError as exc:
            self._fail(self.error(400, f"malformed HTTP request: {exc}"))

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy and not self._in_next:
            self._next()
        if not self.pipeline and not self.closed and self.final is None:
            self.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if not self.reading:  # the first callback of a request (on_message_begin would cost a call more)
            self.reading = True
            self.request_started = time.monotonic()
        self.url += url
        self.count_header(len(url))

    def on_headers_complete(self) -> None:
        self.in_trailers = True  # what on_header reports from here on are a chunked body's trailers
        if self.expect_continue:
            if self.busy or self.pipeline:
                self.continue_owed = True  # after the answers before it
            else:
                self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.max_body_bytes:
            raise Refused(self.too_large(self.body_size))
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():  # the parser did not read a body after the headers
            raise Refused(self.error(400, UPGRADE_REFUSED))
        self.continue_owed = False  # its body came without waiting for the 100
        parts = self.body_parts
        method = self.parser.get_method()
        request = self.request(method, parts[0] if len(parts) == 1 else b"".join(parts))
        keep_alive = self.parser.should_keep_alive()
        head_only = method == b"HEAD"
        self.reading = False
        self._reset()
        if self.busy or self.write_paused:
            self.pipeline.append((request, keep_alive, head_only))
            self.transport.pause_reading()
            return
        self._run(request, keep_alive, head_only)

    # -- helpers for on_header ---------------------------------------------------------------
    def count_header(self, size: int) -> None:
        """Add ``size`` header bytes; refuse the request past the limit (on_header inlines the sum)."""
        self.header_bytes += size
        if self.header_bytes > self.max_header_bytes:
            message = f"request line and headers exceed {self.max_header_bytes} bytes"
            raise Refused(self.error(431, message))

    def check_length(self, value: bytes) -> None:
        """A ``Content-Length`` over the limit is refused before the body arrives."""
        length = int(value) if value.strip().isdigit() else -1
        if length > self.max_body_bytes:
            raise Refused(self.too_large(length))

    def too_large(self, size: int) -> ResponseT:
        return self.error(413, f"the body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes")

    # -- responses ---------------------------------------------------------------------------
    def _run(self, request: RequestT, keep_alive: bool, head_only: bool) -> None:
        self.busy = True
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.server.handle(request, self._reply)

    def _reply(self, response: ResponseT) -> None:
        self.busy = False
        if self.closed:
            return
        keep_alive = self.keep_alive and not self.server.draining
        self.write(response, keep_alive, self.head_only)
        self.last_activity = time.monotonic()
        if not keep_alive:
            self.close()
        elif (self.pipeline or self.final is not None or self.continue_owed) and not self._in_next:
            self._next()

    def _next(self) -> None:
        """Run the pipelined requests in order (in a loop: answers given at once do not recurse),
        then write what is owed after them: the answer to a refused request, or a 100 Continue."""
        self._in_next = True
        try:
            while self.pipeline and not self.busy and not self.write_paused and not self.closed:
                request, keep_alive, head_only = self.pipeline.popleft()
                if not self.pipeline and self.final is None:
                    self.transport.resume_reading()
                self._run(request, keep_alive, head_only)
        finally:
            self._in_next = False
        if self.busy or self.pipeline or self.closed:
            return
        if self.final is not None:
            self.write(self.final, keep_alive=False, head_only=False)
            self.close(linger=True)
        elif self.continue_owed:
            self.continue_owed = False
            self.transport.write(CONTINUE)

    def _fail(self, response: ResponseT) -> None:
        """A request the parser or a limit refused: answer it once the answers before it are
        written, and close."""
        if self.closed or self.final is not None:
            return
        self.final = response
        self.continue_owed = False
        if not self.busy and not self.write_paused:
            self._next()

    def expire(self, now: float) -> None:
        """Called by the sweep: close idle keep-alive and too-slow connections, and drop one whose
        client does not read the refusal owed to it."""
        if self.busy:
            return
        if self.final is not None:
            if now - self.last_activity > READ_TIMEOUT_S:
                self.closed = True
                self.transport.abort()
        elif self.reading and now - self.request_started > READ_TIMEOUT_S:
            self._fail(self.error(408, "the request took too long to arrive"))
        elif not self.reading and now - self.last_activity > KEEPALIVE_TIMEOUT_S:
            if self.write_paused:  # answers the client does not read: a close would wait on them
                self.closed = True
                self.transport.abort()
            else:
                self.close()

    def close(self, *, linger: bool = False) -> None:
        """Close after what is buffered has been written; connection_lost follows. ``linger``: send
        our end of the stream, then read and drop what the client still sends for ``LINGER_S``."""
        if not self.closed:
            self.closed = True
            transport = self.transport
            if linger and transport.can_write_eof():
                transport.write_eof()
                transport.resume_reading()
                asyncio.get_running_loop().call_later(LINGER_S, transport.close)
            else:
                transport.close()
