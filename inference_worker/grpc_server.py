"""gRPC servers on our HTTP/2 core (``h2_base``): a server of routes, and the worker's.

Replaces grpcio's server, which answered at about a quarter of the HTTP/1.1
core's rate (bench/RESULTS.md). ``RpcServer`` routes each call by its path to a
method (``grpc_call.Route``); the worker's ``GrpcServer`` routes every method of
``inference.GRPCInferenceService`` the servicer defines, with its request type
from the protocol's descriptor, and gRPC health. ``ModelInfer`` answers from the
batcher's callback (``InferenceServicer.infer``) with no task per call, the
other RPCs run as tasks. A compressed message is ``UNIMPLEMENTED`` (we never
announce an encoding), one over the message limit is ``RESOURCE_EXHAUSTED``,
metadata over ``max_header_bytes`` too. ``grpc-timeout`` becomes the call's
deadline, read as grpc.aio's ``time_remaining()`` was; when it passes, the call
ends with ``DEADLINE_EXCEEDED`` and its work is cancelled, as grpcio's server
does (one timer per connection, ``DeadlineTimer``). A client repeats its
header block: a small one is read once per connection.

A sweep (``Timeouts``) closes a connection that has not sent the preface and
SETTINGS within ``handshake_s``, sends GOAWAY (NO_ERROR) to one with no call
open and no HEADERS or DATA for ``idle_s`` (the HTTP/1.1 side's keep-alive
time; a client's PINGs do not keep it open: grpc-core's ``max_connection_idle``
counts calls, not pings), and cancels the calls whose request stopped arriving:
nothing received for ``read_s`` (the HTTP/1.1 side's 408), or ``stream_idle_s``
for a client stream (``ModelStreamInfer`` waits for its client's next request;
Envoy's stream idle timeout, 5 minutes). A connection whose answers wait for a client that has
taken none of them (no WINDOW_UPDATE, the socket's buffer full) for ``idle_s`` is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from inference_worker import build_protos, h2_base
from inference_worker.config import Limits
from inference_worker.dataplane import DataPlane
from inference_worker.grpc_api import SERVICE, InferenceServicer
from inference_worker.grpc_call import (
    BIDI,
    FAST_INFER,
    HEADERS,
    SERVER_STREAM,
    TIMEOUT,
    UNARY,
    UNITS,
    Call,
    DeadlineTimer,
    Route,
    status_block,
)  # fmt: skip
from inference_worker.h2_send import CANCEL, NO_ERROR, ReadScope, Stream
from inference_worker.health_service import HEALTH_SERVICE, Health
from inference_worker.hpack_codec import literal
from inference_worker.http_base import KEEPALIVE_TIMEOUT_S, READ_TIMEOUT_S

_CACHED_HEAD = 4096
"""Heads (a call's route and timeout) of header lists up to this size are kept, 64 at most."""
_TOO_LARGE = HEADERS + status_block(
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "the call's metadata is too large"
)


@dataclass(frozen=True)
class Timeouts:
    """When the sweep (every ``sweep_s``) ends a connection or its calls (see the module's docstring)."""

    handshake_s: float = 10.0
    """A client sends the preface and SETTINGS as it connects, before waiting for anything."""
    idle_s: float = KEEPALIVE_TIMEOUT_S
    read_s: float = READ_TIMEOUT_S
    stream_idle_s: float = 300.0
    sweep_s: float = 5.0


TIMEOUTS = Timeouts()
"""The servers' default (tests replace it)."""


class GrpcConnection(h2_base.Connection):
    """One client connection: streams become calls of the server's routes."""

    def __init__(self, server: RpcServer) -> None:
        super().__init__(server.connections, max_header_bytes=server.max_header_bytes)
        self.scope = server.scope
        self.routes = server.routes
        self.max_message = server.max_message
        self.timeouts = server.timeouts
        self._heads: dict[
            tuple[tuple[bytes, bytes], ...], tuple[Route | None, float | None, bytes | None]
        ] = {}
        self._opened = self._quiet_since = time.monotonic()
        self._seen = 0
        """``received`` at the sweep that saw it change last (at ``_quiet_since``)."""
        self._deadlines = DeadlineTimer(self._expire_due, asyncio.get_running_loop())
        self._progress: tuple[int, int] = (0, 0)
        self._flowing_since = self._opened
        """When the sweep last saw output leave, or none waiting (``Sender.stuck``)."""

    def on_headers(self, stream: Stream, headers: tuple[tuple[bytes, bytes], ...], end: bool) -> None:
        head = self._heads.get(headers)  # clients repeat their header block: read it once
        if head is None:
            head, size = self._read_head(headers)
            if size <= _CACHED_HEAD:
                if len(self._heads) >= 64:
                    self._heads.clear()
                self._heads[headers] = head
        route, timeout, refusal = head
        if refusal is not None:
            self.send(stream, None, None, refusal)
            return
        assert route is not None  # noqa: S101 - a head without a route has a refusal
        deadline = None if timeout is None else time.monotonic() + timeout
        call = stream.call = Call(self, stream, route, deadline, headers)
        if deadline is not None:
            self._deadlines.at(deadline)
        if route.kind == BIDI:
            call.task = asyncio.get_running_loop().create_task(call.run(call.incoming()))
        if end:
            call.end()

    def _read_head(
        self, headers: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[tuple[Route | None, float | None, bytes | None], int]:
        """The call's route and timeout, or the header block that refuses it; and the headers' size."""
        path = content_type = timeout = b""
        method = b"POST"
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b":method":
                method = value
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            return (None, None, literal(b":status", b"405" if method != b"POST" else b"415")), size
        route = self.routes.get(path)
        if route is None:
            message = f"unknown method {path.decode('latin-1')[:200]}"
            return (None, None, HEADERS + status_block(grpc.StatusCode.UNIMPLEMENTED.value[0], message)), size
        match = TIMEOUT.fullmatch(timeout) if timeout else None
        return (route, None if match is None else int(match[1]) * UNITS[match[2]], None), size

    def on_oversize(self, stream: Stream) -> None:
        """Metadata over ``max_header_bytes`` (the decoder dropped it): ``RESOURCE_EXHAUSTED``."""
        self.send(stream, None, None, _TOO_LARGE)

    def on_data(self, stream: Stream, data: bytes) -> None:
        call = stream.call
        if call is not None and not call.done:
            call.feed(data)
        else:
            self.consumed(stream, len(data))

    def on_end(self, stream: Stream) -> None:
        if stream.call is not None:
            stream.call.end()

    def on_reset(self, stream: Stream) -> None:
        if stream.call is not None:
            stream.call.cancel()

    def _expire_due(self, now: float) -> float:
        """End the calls whose client's deadline passed (``Call.expire``); the earliest left."""
        due = math.inf
        for stream in list(self.streams.values()):
            call: Call | None = stream.call
            if call is None or call.done or call.deadline is None:
                continue
            if call.deadline <= now:
                call.expire()
            elif call.deadline < due:
                due = call.deadline
        return due

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadlines.cancel()
        super().connection_lost(exc)

    def expire(self, now: float) -> None:
        """Called by the sweep: end a connection or its calls that overstayed (``Timeouts``)."""
        limits = self.timeouts
        progress = (self.drained, self.transport.get_write_buffer_size())
        if progress != self._progress or not self.stuck():
            self._progress, self._flowing_since = progress, now
        elif now - self._flowing_since > limits.idle_s:  # a client that stopped reading: a close
            self.closed = True  # (even the GOAWAY's) would wait on it for good
            self.transport.abort()
            return
        if self.closed:
            return
        if not self.settled:
            if now - self._opened > limits.handshake_s:
                self.close()
            return
        if self.received != self._seen:
            self._seen, self._quiet_since = self.received, now
            return
        quiet = now - self._quiet_since
        if not self.streams:
            if quiet > limits.idle_s:  # lingers: the client reads the GOAWAY, not a reset
                self.goaway(NO_ERROR, "the connection was idle")
            return
        if quiet > limits.read_s:
            for stream in [s for s in self.streams.values() if not s.closed_remote]:
                if quiet > limits.stream_idle_s or stream.call is None or stream.call.route.kind != BIDI:
                    self.reset(stream.id, CANCEL)
                    self._drop(stream)

    def refuse_preface(self, data: bytes) -> None:
        if data[:8].split(b" ", 1)[0].isalpha():  # an HTTP/1.x request line
            body = b"this port speaks gRPC (HTTP/2); send HTTP/1.1 requests to the HTTP port\n"
            self.transport.write(
                b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: h2c\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.close()
            return
        super().refuse_preface(data)


class RpcServer:
    """Listening socket, connections and routes (paths to methods)."""

    def __init__(
        self,
        *,
        max_header_bytes: int,
        max_message: int,
        scope: ReadScope | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_message = max_message
        self.scope = scope
        """Shared with the connections this server's calls write to (the gateway's to the replicas)."""
        self.timeouts = timeouts or TIMEOUTS
        self.connections: set[h2_base.Connection] = set()
        self.routes: dict[bytes, Route] = {}
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def add(self, path: str, kind: int, request_type: Any, handler: Callable[..., Any]) -> None:
        """Route ``path``; with no ``request_type`` the method takes and returns bytes."""
        self.routes[path.encode()] = Route(kind, request_type, handler)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GrpcConnection(self), host, port, backlog=2048)
        self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.timeouts.sweep_s)
            now = time.monotonic()
            for connection in list(self.connections):
                if isinstance(connection, GrpcConnection):
                    connection.expire(now)

    async def stop(self, grace: float) -> None:
        """No new connections or calls; calls in flight get ``grace`` seconds, then connections close."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.shut_down()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # connection_lost runs: calls left are cancelled
        if self._sweeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


class GrpcServer(RpcServer):
    """The worker's: the inference service and gRPC health, and the health states."""

    def __init__(self, dataplane: DataPlane, limits: Limits, scope: ReadScope | None = None) -> None:
        super().__init__(
            max_header_bytes=limits.max_header_bytes, max_message=limits.max_grpc_message_bytes, scope=scope
        )
        pb2, _ = build_protos.load()
        self.servicer = InferenceServicer(dataplane, limits, pb2)
        self.health = Health()
        for method in pb2.DESCRIPTOR.services_by_name[SERVICE.rsplit(".", 1)[1]].methods:
            handler = getattr(self.servicer, method.name, None)
            if handler is None:
                continue
            kind = BIDI if method.client_streaming else SERVER_STREAM if method.server_streaming else UNARY
            if method.name == "ModelInfer":
                kind, handler = FAST_INFER, self.servicer.infer
            self.add(f"/{SERVICE}/{method.name}", kind, getattr(pb2, method.input_type.name), handler)
        check, watch = self.health.methods()
        self.add(f"/{HEALTH_SERVICE}/Check", UNARY, self.health.request_type, check)
        self.add(f"/{HEALTH_SERVICE}/Watch", SERVER_STREAM, self.health.request_type, watch)

    async def start(self, host: str, port: int) -> int:
        """Listen and serve; returns the bound port. Health starts NOT_SERVING."""
        await self.set_serving(False)
        return await super().start(host, port)

    async def set_serving(self, serving: bool) -> None:
        for service in ("", SERVICE):
            self.health.set(service, serving)

    async def drain(self) -> None:
        """Health turns NOT_SERVING for good (watchers are told at once)."""
        self.health.enter_graceful_shutdown()
