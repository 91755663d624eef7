"""The gateway's unary gRPC calls to replicas, over our HTTP/2 core as a client (``h2_base``).

One connection per replica target carries every call to it (a second opens
when the first holds as many streams as the replica takes). A call is a
header block (static ``:method``/``:scheme``, literal fields, ``grpc-timeout`` when the
client's deadline is the shorter, ``forward_below_s``),
the request's bytes framed as one message, and the answer's bytes back: no
protobuf decode. Failures raise ``UpstreamError`` with grpc.aio's codes: a
replica that cannot be reached, resets the connection or refuses the stream
is ``UNAVAILABLE`` (the proxy retries those on another replica), the deadline
passing is ``DEADLINE_EXCEEDED`` (and the stream is cancelled), otherwise
the replica's own ``grpc-status`` and ``grpc-message``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import grpc

from inference_worker import h2_base
from inference_worker.grpc_call import MESSAGE_PREFIX, DeadlineTimer
from inference_worker.h2_send import CANCEL, REFUSED_STREAM, ReadScope, Stream
from inference_worker.hpack_codec import literal

CONNECT_TIMEOUT_S = 5.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_FIXED = b"\x83\x86" + literal(b"content-type", b"application/grpc") + literal(b"te", b"trailers")
"""``:method: POST`` and ``:scheme: http`` (static table entries 3 and 6), then the gRPC fields."""


class UpstreamError(Exception):
    """A call that failed, with grpc.aio's status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.status = code
        self.details = details


Done = Callable[["bytes | UpstreamError"], None]
"""Gets a call's outcome, once: the answer's message, or why there is none."""


class _Answer:
    """What has come back on one stream, and who waits for it."""

    __slots__ = ("deadline", "done", "parts", "size")

    def __init__(self, done: Done, deadline: float) -> None:
        self.done: Done | None = done
        self.parts: list[bytes] = []
        self.size = 0
        self.deadline = deadline


class UpstreamConnection(h2_base.Connection):
    """One connection to one replica, as a client."""

    def __init__(
        self,
        authority: bytes,
        max_message: int,
        scope: ReadScope | None = None,
        *,
        forward_below_s: float = math.inf,
    ) -> None:
        super().__init__(set(), max_header_bytes=64 * 1024, client=True)
        self.scope = scope
        self.max_message = max_message
        self.forward_below_s = forward_below_s
        """A call's timeout goes to the replica (``grpc-timeout``) when shorter: the client's deadline.
        The gateway's own timeout is its to keep (it resets the stream when it passes), and a replica
        told none arms no timer for the call."""
        self.next_id = 1
        self.head = _FIXED + literal(b":authority", authority)
        self.loop = asyncio.get_running_loop()  # once: each lookup costs a getpid()
        self._deadlines = DeadlineTimer(self._expire_due, self.loop)

    @property
    def full(self) -> bool:
        return (
            self.closed
            or self.going_away
            or len(self.streams) >= self.peer_max_streams
            or self.next_id > 1 << 30
        )

    def start(self, path: bytes, request: bytes, metadata: bytes, timeout: float, done: Done) -> Stream:
        """Send the call; ``done`` gets its outcome (``DEADLINE_EXCEEDED`` after ``timeout``, and the
        stream is reset: the replica cancels it)."""
        stream = Stream(self.next_id, self.initial_window)
        self.last_stream, self.next_id = self.next_id, self.next_id + 2
        self.streams[stream.id] = stream
        deadline = time.monotonic() + timeout
        stream.call = _Answer(done, deadline)
        self._deadlines.at(deadline)
        block = self.head + _path(path) + metadata
        if timeout < self.forward_below_s:
            block += _timeout(max(1, math.ceil(timeout * 1000)))
        self.send(stream, block, MESSAGE_PREFIX.pack(0, len(request)) + request, None, end=True)
        return stream

    def cancel(self, stream: Stream) -> None:
        """The caller gave up: reset the stream; its ``done`` is not called."""
        answer: _Answer | None = stream.call
        if answer is not None:
            answer.done = None
        if self.streams.get(stream.id) is stream:
            self.reset(stream.id, CANCEL)
            self.release(stream)

    def _expire_due(self, now: float) -> float:
        """End the calls past their deadline (reset, ``DEADLINE_EXCEEDED``); the earliest left."""
        due = math.inf
        for stream in list(self.streams.values()):
            answer: _Answer | None = stream.call
            if answer is None:
                continue
            if answer.deadline <= now:
                self.reset(stream.id, CANCEL)
                self._settle(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            elif answer.deadline < due:
                due = answer.deadline
        return due

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadlines.cancel()
        super().connection_lost(exc)

    def on_headers(self, stream: Stream, headers: tuple[tuple[bytes, bytes], ...], end: bool) -> None:
        status = message = b""
        for name, value in headers:
            if name == b"grpc-status":
                status = value
            elif name == b"grpc-message":
                message = value
            elif name == b":status" and value != b"200":
                text = f"the replica answered HTTP {value.decode('latin-1')}"
                return self._settle(stream, grpc.StatusCode.UNAVAILABLE, text)
        if not end:
            return None
        code = _CODES.get(int(status)) if status.isdigit() else None
        if code is None:
            self._settle(stream, grpc.StatusCode.INTERNAL, "the replica's answer has no grpc-status")
        elif code is grpc.StatusCode.OK:
            self._settle(stream, None, "")
        else:
            text = unquote_to_bytes(message).decode(errors="replace") if message else code.name
            self._settle(stream, code, text)
        return None

    def on_data(self, stream: Stream, data: bytes) -> None:
        answer: _Answer = stream.call
        answer.parts.append(data)
        answer.size += len(data)
        self.consumed(stream, len(data))
        if answer.size > self.max_message + 5:
            self.reset(stream.id, CANCEL)
            self._settle(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, "the replica's answer exceeds the limit")

    def on_end(self, stream: Stream) -> None:
        self._settle(stream, grpc.StatusCode.INTERNAL, "the replica ended the stream without trailers")

    def on_oversize(self, stream: Stream) -> None:
        if not stream.closed_remote:
            self.reset(stream.id, CANCEL)
        message = f"the replica's answer has metadata over {self.max_header_bytes} bytes"
        self._settle(stream, grpc.StatusCode.INTERNAL, message)

    def on_reset(self, stream: Stream) -> None:
        code = stream.reset_code
        if code is None or code == REFUSED_STREAM:
            self._settle(stream, grpc.StatusCode.UNAVAILABLE, "the connection to the replica was lost")
        else:
            self._settle(stream, grpc.StatusCode.CANCELLED if code == CANCEL else grpc.StatusCode.INTERNAL,
                         f"the replica reset the stream (HTTP/2 error {code})")  # fmt: skip

    def _settle(self, stream: Stream, code: grpc.StatusCode | None, message: str) -> None:
        answer: _Answer | None = stream.call
        self.release(stream)
        if answer is None or answer.done is None:
            return None
        done, answer.done = answer.done, None
        if code is not None:
            return done(UpstreamError(code, message))
        body = answer.parts[0] if len(answer.parts) == 1 else b"".join(answer.parts)
        if len(body) < 5 or body[0] or MESSAGE_PREFIX.unpack_from(body)[1] != len(body) - 5:
            return done(UpstreamError(grpc.StatusCode.INTERNAL, "the replica's answer is not one message"))
        return done(body[5:])

    def retire(self) -> None:
        """Take no new calls; close once those in flight have ended."""
        self.going_away = True
        if not self.streams:
            self.close()


class Upstreams:
    """The connections to the replicas, by target (``host:port``)."""

    def __init__(
        self, max_message: int, scope: ReadScope | None = None, *, forward_below_s: float = math.inf
    ) -> None:
        self.max_message = max_message
        self.forward_below_s = forward_below_s
        """Each connection's ``forward_below_s``."""
        self.scope = scope
        """Shared with the gateway's server: a call started while a client's read is in progress goes
        out when that read ends, and an answer read from a replica reaches its client as soon."""
        self._connections: dict[str, UpstreamConnection] = {}
        self._connecting: dict[str, asyncio.Future[UpstreamConnection]] = {}

    async def call(
        self, target: str, path: bytes, request: bytes, metadata: Iterable[tuple[str, Any]], timeout: float
    ) -> bytes:
        """The replica's answer to ``request`` (bytes), or ``UpstreamError``."""
        connection = self._connections.get(target)
        if connection is None or connection.full:
            connection = await self._connect(target)
            if connection.closed:  # the replica closed it before the call went out (it is going away)
                raise UpstreamError(
                    grpc.StatusCode.UNAVAILABLE, f"{target} closed the connection as it opened"
                )
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def done(outcome: bytes | UpstreamError) -> None:
            if future.done():
                return
            if isinstance(outcome, UpstreamError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        stream = connection.start(path, request, _metadata(tuple(metadata)), timeout, done)
        try:
            return await future
        except asyncio.CancelledError:
            connection.cancel(stream)
            raise

    def send(
        self,
        target: str,
        path: bytes,
        request: bytes,
        metadata: tuple[tuple[str, Any], ...],
        timeout: float,
        done: Done,
    ) -> Callable[[], None] | None:
        """``call`` from callbacks, when a connection to ``target`` is open and has room: ``done`` gets
        the outcome; returns what cancels the call. None (and ``done`` is not called) otherwise."""
        connection = self._connections.get(target)
        if connection is None or connection.full:
            return None
        stream = connection.start(path, request, _metadata(metadata), timeout, done)
        return functools.partial(connection.cancel, stream)

    async def _connect(self, target: str) -> UpstreamConnection:
        pending = self._connecting.get(target)
        if pending is not None:
            return await asyncio.shield(pending)
        future = self._connecting[target] = asyncio.get_running_loop().create_future()
        try:
            connection = await self._open(target)
        except UpstreamError as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: callers waiting get it, none left means no warning
            raise
        finally:
            del self._connecting[target]
        old = self._connections.get(target)
        if old is not None and old is not connection:
            old.retire()
        self._connections[target] = connection
        future.set_result(connection)
        return connection

    async def _open(self, target: str) -> UpstreamConnection:
        host, _, port = target.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(
                        target.encode(), self.max_message, self.scope, forward_below_s=self.forward_below_s
                    ),
                    host.strip("[]"),
                    int(port),
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ValueError) as exc:
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE, f"failed to connect to {target}: {exc}"
            ) from None
        return connection

    def keep_only(self, targets: set[str]) -> None:
        """Retire the connections to targets no longer routed (after their calls end)."""
        for target in [t for t in self._connections if t not in targets]:
            self._connections.pop(target).retire()

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


@functools.lru_cache(maxsize=64)
def _path(path: bytes) -> bytes:
    return literal(b":path", path)


@functools.lru_cache(maxsize=1024)
def _timeout(milliseconds: int) -> bytes:
    return literal(b"grpc-timeout", b"%dm" % milliseconds)


_METADATA: dict[tuple[tuple[str, Any], ...], bytes] = {}
"""Header blocks of the metadata calls pass on, up to 4 KiB each, 256 at most (clients repeat theirs)."""


def _metadata(metadata: tuple[tuple[str, Any], ...]) -> bytes:
    block = _METADATA.get(metadata)
    if block is None:
        block = b"".join(literal(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in metadata)
        if len(block) <= 4096:
            if len(_METADATA) >= 256:
                _METADATA.clear()
            _METADATA[metadata] = block
    return block
