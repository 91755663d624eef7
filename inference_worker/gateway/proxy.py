"""The gateway's upstream client: pooled keep-alive HTTP/1.1 connections per replica.

Chosen by measurement (bench/RESULTS.md, "Gateway"): httpx costs about a
millisecond per request and aiohttp's client a few hundred microseconds, more
than the gateway's whole 0.3 ms budget; this client is an ``asyncio.Protocol``
per connection with httptools' response parser, driven by callbacks (no task,
future or timer per request), which leaves the gateway's hop at about a tenth
of a millisecond.

Limits are explicit (``PoolLimits``): connections per replica (requests beyond
wait in order for one to free up), connect timeout, the request deadline the
caller passes, and how long an idle connection is kept (less than the worker's
own keep-alive timeout, so the worker never closes one under us in normal
operation). Deadlines and idle connections are checked by ``sweep``, which the
gateway calls a few times a second, instead of a timer per request.

A request gets exactly one answer through its ``done`` callback: an
``UpstreamResponse`` (any status), or an ``UpstreamError`` whose ``retryable``
says the replica cannot have processed it (it refused the connection, or the
connection closed before a byte of the answer came back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from inference_worker import http_base

log = logging.getLogger("inference_worker.gateway")

NOT_PASSED_BACK: frozenset[bytes] = frozenset(
    b"connection keep-alive transfer-encoding te trailer upgrade content-length proxy-connection".split()
    + b"proxy-authenticate proxy-authorization x-kiln-variant x-kiln-model-version".split()
)
"""Response headers not passed back: hop-by-hop ones, the framing and the labels the gateway writes."""


@dataclass(frozen=True)
class PoolLimits:
    """Bounds of the connections to one replica."""

    max_connections: int = 128
    connect_timeout_s: float = 2.0
    idle_timeout_s: float = 30.0
    """Below the worker's 75 s keep-alive: the gateway closes first."""
    down_s: float = 1.0
    """After a failed connect, the replica is chosen last for this long."""


class UpstreamError(Exception):
    """No usable answer: ``retryable`` when the replica cannot have processed the request."""

    def __init__(self, message: str, *, retryable: bool, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status


@dataclass(slots=True)
class UpstreamResponse:
    """A replica's answer: status, end-to-end header lines, body."""

    status: int
    headers: bytes
    body: bytes


Done = Callable[[UpstreamResponse | UpstreamError], None]
_Waiter = tuple[bytes, bytes, Done, float]


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: Done | None = None
        self.deadline = 0.0
        self.idle_since = 0.0
        self.received = False
        self.closed = False
        self.headers = b""
        self.hop_by_hop: frozenset[bytes] = frozenset()
        self.parts: list[bytes] = []

    def send(self, head: bytes, body: bytes, done: Done, deadline: float) -> None:
        self.done = done
        self.deadline = deadline
        self.received = False
        if len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            log.error("reading the answer of %s failed", self.pool.url, exc_info=exc.__context__)
            self._answer(UpstreamError(f"reading the answer of {self.pool.url} failed", retryable=False))
            self.close()
        except httptools.HttpParserError as exc:
            self._answer(UpstreamError(f"malformed answer from {self.pool.url}: {exc}", retryable=False))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        if self.done is not None:
            retryable = not self.received
            self._answer(UpstreamError(f"{self.pool.url} closed the connection", retryable=retryable))

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower not in NOT_PASSED_BACK:
            self.headers += b"%s: %s\r\n" % (name, value)
        elif lower == b"connection" and value.lower() not in (b"keep-alive", b"close"):
            self.hop_by_hop |= http_base.connection_options(value)

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        parts = self.parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        headers = self.headers
        if self.hop_by_hop:
            headers, self.hop_by_hop = http_base.without_fields(headers, self.hop_by_hop), frozenset()
        response = UpstreamResponse(self.parser.get_status_code(), headers, body)
        self.headers, self.parts = b"", []
        done, self.done = self.done, None
        self.pool.release(self, self.parser.should_keep_alive())
        if done is not None:
            self.pool.settle(done, response)

    # -- endings -----------------------------------------------------------------------------
    def expire(self) -> None:
        """The request's deadline passed: answer 504 and drop the connection."""
        seconds = self.pool.timeout_s
        message = f"{self.pool.url} did not answer within {seconds:g} s"
        self._answer(UpstreamError(message, retryable=False, status=504))
        self.close(abort=True)

    def _answer(self, error: UpstreamError) -> None:
        done, self.done = self.done, None
        if done is not None:
            self.pool.settle(done, error)

    def close(self, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort() if abort else self.transport.close()


class ReplicaPool:
    """Connections to one replica, its outstanding-request count and its waiters."""

    def __init__(
        self, host: str, port: int, limits: PoolLimits, timeout_s: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.host_line = b"Host: %s:%d\r\n" % (host.encode("idna"), port)
        self.limits = limits
        self.timeout_s = timeout_s
        self.loop = loop
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()
        self.opening = 0
        self.outstanding = 0
        self.waiters: deque[_Waiter] = deque()
        self.down_until = 0.0
        self.retired = False

    def load(self, now: float) -> float:
        """Outstanding requests; a replica that just refused a connection counts as very busy."""
        return self.outstanding + (1e6 if self.down_until > now else 0.0)

    def request(self, head: bytes, body: bytes, done: Done, deadline: float) -> None:
        """Send ``head`` (request line and headers, without Host) and ``body``; ``done`` gets the answer."""
        self.outstanding += 1
        head = head + self.host_line + b"\r\n"
        idle = self.idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                self.busy.add(connection)
                connection.send(head, body, done, deadline)
                return
        if len(self.busy) + self.opening < self.limits.max_connections:
            self._open((head, body, done, deadline))
        else:
            self.waiters.append((head, body, done, deadline))

    def settle(self, done: Done, result: UpstreamResponse | UpstreamError) -> None:
        self.outstanding -= 1
        done(result)

    def release(self, connection: UpstreamConnection, keep_alive: bool) -> None:
        """A connection finished its request: reuse it, hand it to a waiter, or close it."""
        self.busy.discard(connection)
        if not keep_alive or self.retired or connection.closed:
            connection.close()
            if self.waiters:
                self._open(self.waiters.popleft())
        elif self.waiters:
            head, body, done, deadline = self.waiters.popleft()
            self.busy.add(connection)
            connection.send(head, body, done, deadline)
        else:
            connection.idle_since = self.loop.time()
            self.idle.append(connection)

    def lost(self, connection: UpstreamConnection) -> None:
        self.busy.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if self.waiters and len(self.busy) + self.opening < self.limits.max_connections:
            self._open(self.waiters.popleft())

    def _open(self, waiter: _Waiter) -> None:
        self.opening += 1
        self.loop.create_task(self._connect(waiter))

    async def _connect(self, waiter: _Waiter) -> None:
        head, body, done, deadline = waiter
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.limits.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            self.opening -= 1
            self._unreachable(done, f"cannot connect to {self.url}: {str(exc) or type(exc).__name__}")
            return
        self.opening -= 1
        if connection.closed:  # the replica closed it before the request went out (it is going away)
            self._unreachable(done, f"{self.url} closed the connection as it opened")
            return
        self.down_until = 0.0
        if self.retired:
            connection.close()
            self.settle(done, UpstreamError(f"{self.url} left the routing table", retryable=True))
            return
        self.busy.add(connection)
        connection.send(head, body, done, deadline)

    def _unreachable(self, done: Done, message: str) -> None:
        """The replica cannot have got the request: retryable, and chosen last for a while."""
        self.down_until = self.loop.time() + self.limits.down_s
        self.settle(done, UpstreamError(message, retryable=True))
        if not self.busy and not self.opening:
            self._fail_waiters(message, retryable=True)

    def _fail_waiters(self, message: str, *, retryable: bool, status: int = 502) -> None:
        while self.waiters:
            _, _, done, _ = self.waiters.popleft()
            self.settle(done, UpstreamError(message, retryable=retryable, status=status))

    def sweep(self, now: float) -> None:
        """Expire requests past their deadline and connections idle too long."""
        for connection in [c for c in self.busy if c.deadline < now]:
            connection.expire()
        while self.waiters and self.waiters[0][3] < now:
            _, _, done, _ = self.waiters.popleft()
            message = f"no connection to {self.url} freed up before the deadline"
            self.settle(done, UpstreamError(message, retryable=False, status=504))
        keep = self.limits.idle_timeout_s
        for connection in [c for c in self.idle if now - c.idle_since > keep]:
            self.idle.remove(connection)
            connection.close()

    def retire(self) -> None:
        """The replica left the table: close idle connections now, busy ones after their answer."""
        self.retired = True
        for connection in self.idle:
            connection.close()
        self.idle.clear()

    @property
    def empty(self) -> bool:
        return not (self.busy or self.opening or self.waiters or self.outstanding)

    def close(self) -> None:
        for connection in [*self.idle, *self.busy]:
            connection.close(abort=True)
        self.idle.clear()
        message = f"the gateway is shutting down; {self.url} was not asked"
        self._fail_waiters(message, retryable=False, status=503)


class Upstreams:
    """Every replica's pool by url; pools of replicas gone from the table retire, then go."""

    def __init__(self, limits: PoolLimits, timeout_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.timeout_s = timeout_s
        self.loop = loop
        self.pools: dict[str, ReplicaPool] = {}

    def pool(self, url: str, host: str, port: int) -> ReplicaPool:
        pool = self.pools.get(url)
        if pool is None:
            pool = self.pools[url] = ReplicaPool(host, port, self.limits, self.timeout_s, self.loop)
        return pool

    def load(self, url: str) -> float:
        pool = self.pools.get(url)
        return 0.0 if pool is None else pool.load(self.loop.time())

    def keep_only(self, urls: set[str]) -> None:
        """Retire the pools of replicas no longer in the table (and revive those back in it)."""
        for url, pool in self.pools.items():
            if url not in urls:
                pool.retire()
            else:
                pool.retired = False

    def sweep(self) -> None:
        now = self.loop.time()
        for url, pool in list(self.pools.items()):
            pool.sweep(now)
            if pool.retired and pool.empty:
                del self.pools[url]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
