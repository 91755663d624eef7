"""One gRPC call on one HTTP/2 stream (``h2_base``): message framing, its deadline, its answer.

A ``Call`` is also the call context its method reads (``grpc_api.CallContext``, a subset of
grpc.aio's): ``time_remaining``, ``abort``, ``invocation_metadata`` and
``send_initial_metadata``. A route with no request type takes and returns raw bytes (the
gateway's proxy); otherwise messages are parsed and serialized with the route's protobuf types.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from inference_worker.errors import GRPC_STATUS, WorkerError
from inference_worker.h2_send import Stream
from inference_worker.hpack_codec import literal

log = logging.getLogger("inference_worker.grpc")

READ_AHEAD = 64
HEADERS = b"\x88" + literal(b"content-type", b"application/grpc")  # \x88: ":status: 200", indexed
_OK = literal(b"grpc-status", b"0")
MESSAGE_PREFIX = struct.Struct(">BI")
"""A gRPC message's prefix on the wire: compressed or not, and its length."""
TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
DEADLINE_GRANULE_S = 0.005
"""A connection's deadline timer (one for its calls, not one a call: arming and cancelling a timer
costs about 2 µs, a twentieth of a quick call) fires at most this often: calls whose deadlines fall
closer together end together, up to this much late, so calls each given a deadline a little after
the last cannot make it walk the connection's streams once per call."""
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNARY, SERVER_STREAM, BIDI, FAST_INFER = range(4)
"""How a route runs: a coroutine method as a task, an async generator, a stream's reader, or (fast)
a plain function of the request and the call that answers through ``Call.reply`` (now or later) and
returns what cancels it (or None)."""
_NO_REQUESTS: deque[bytes | None] = deque(maxlen=0)
"""Every call but a client stream's: it never queues a request message."""


class DeadlineTimer:
    """One timer for the deadlines of a connection's calls (``DEADLINE_GRANULE_S``).

    ``at`` takes a call's deadline (``time.monotonic()``); when the earliest passes, ``expire(now)``
    ends the calls past theirs and returns the earliest deadline left (``math.inf`` for none).
    """

    __slots__ = ("_expire", "_handle", "_loop", "due")

    def __init__(self, expire: Callable[[float], float], loop: asyncio.AbstractEventLoop) -> None:
        self._expire = expire
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self.due = math.inf

    def at(self, deadline: float) -> None:
        if deadline < self.due:
            if self._handle is not None:
                self._handle.cancel()
            self.due = deadline
            self._handle = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._handle, self.due = None, math.inf
        now = time.monotonic()
        left = self._expire(now + 0.001)  # the loop's clock, which fires timers, lags by up to 1 ms
        if left < math.inf:  # (what an ended call's outcome started may have armed it already)
            self.at(max(left, now + DEADLINE_GRANULE_S))

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle, self.due = None, math.inf


class Carrier(Protocol):
    """What a call needs of its connection (``grpc_server.GrpcConnection``)."""

    max_message: int

    def send(
        self, stream: Stream, headers: bytes | None, data: bytes | None, trailers: bytes | None
    ) -> None: ...

    def consumed(self, stream: Stream, size: int) -> None: ...

    async def writable(self, stream: Stream) -> None: ...


@functools.lru_cache(maxsize=256)
def _initial_block(metadata: tuple[tuple[str, str], ...]) -> bytes:
    """The answer's header block with ``metadata`` (a gateway labels every answer alike)."""
    return HEADERS + b"".join(literal(k.encode(), v.encode()) for k, v in metadata)


def status_block(code: int, message: str) -> bytes:
    """Trailers for ``code``; the message percent-encoded as gRPC's spec asks."""
    block = literal(b"grpc-status", b"%d" % code)
    if message:
        raw = message.encode()
        text = bytes(raw) if all(32 <= b < 127 and b != 37 for b in raw) else _percent(raw)
        block += literal(b"grpc-message", text)
    return block


def _percent(raw: bytes) -> bytes:
    return b"".join(bytes([b]) if 32 <= b < 127 and b != 37 else b"%%%02X" % b for b in raw)


class Aborted(Exception):
    """Raised by ``Call.abort``: the call ends with ``code`` (a number) and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Route:
    """One method: how it runs, its request type and its handler."""

    __slots__ = ("handler", "kind", "parse")

    def __init__(self, kind: int, request_type: Any, handler: Callable[..., Any]) -> None:
        self.kind = kind
        self.parse: Callable[[bytes], Any] = bytes if request_type is None else request_type.FromString
        """Bytes to the request message (a route with no request type takes the bytes)."""
        self.handler = handler


class Call:
    """One RPC on one stream: its messages, deadline and outcome; the servicer's ``CallContext``."""

    __slots__ = (
        "buffer",
        "conn",
        "deadline",
        "done",
        "head",
        "headers",
        "held",
        "message",
        "needed",
        "on_cancel",
        "requests",
        "route",
        "sent_headers",
        "stream",
        "task",
        "waiter",
    )  # fmt: skip

    def __init__(
        self,
        conn: Carrier,
        stream: Stream,
        route: Route,
        deadline: float | None,
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        self.conn = conn
        self.headers = headers
        self.head = HEADERS
        """The header block of the answer (with the initial metadata the method added)."""
        self.stream = stream
        self.route = route
        self.deadline = deadline
        self.buffer: bytes | bytearray = b""
        self.needed = 0
        self.message: bytes | None = None
        self.requests: deque[bytes | None] = _NO_REQUESTS if route.kind != BIDI else deque()
        """A client stream's messages waiting for the servicer (``incoming``)."""
        self.held = 0
        self.waiter: asyncio.Future[None] | None = None
        self.sent_headers = False
        self.done = False
        self.on_cancel: Callable[[], None] | None = None
        self.task: asyncio.Task[None] | None = None

    # -- CallContext ---------------------------------------------------------------------------
    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code.value[0], details)

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The call's metadata as grpc.aio gives it: text values, bytes for ``-bin`` keys."""
        return tuple(
            (name.decode("latin-1"), value if name.endswith(b"-bin") else value.decode("latin-1"))
            for name, value in self.headers
            if not name.startswith(b":")
        )

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.set_initial_metadata(metadata)

    def set_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        """The answer's initial metadata (before its first message)."""
        if not self.sent_headers:
            self.head = _initial_block(metadata)

    # -- answers -------------------------------------------------------------------------------
    def reply(self, result: Any) -> None:
        """A unary answer: the response message, or a ``WorkerError``."""
        if self.done:
            return None
        self.on_cancel = None
        if isinstance(result, WorkerError):
            return self.fail(GRPC_STATUS[result.code].value[0], result.message)
        payload = result if isinstance(result, bytes) else result.SerializeToString()
        if len(payload) > self.conn.max_message:
            return self.fail(
                grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "the response exceeds the size limit"
            )
        self.done = True
        head = None if self.sent_headers else self.head
        self.conn.send(self.stream, head, MESSAGE_PREFIX.pack(0, len(payload)) + payload, _OK)
        return None

    def send_message(self, payload: bytes) -> None:
        if not self.done:
            head = None if self.sent_headers else self.head
            self.sent_headers = True
            self.conn.send(self.stream, head, MESSAGE_PREFIX.pack(0, len(payload)) + payload, None)

    def finish(self) -> None:
        if not self.done:
            self._end()
            self.conn.send(self.stream, None if self.sent_headers else self.head, None, _OK)

    def fail(self, code: int, message: str) -> None:
        if not self.done:
            self._end()
            trailers = status_block(code, message)
            self.conn.send(self.stream, None, None, trailers if self.sent_headers else self.head + trailers)
            self.cancel()

    def _end(self) -> None:
        self.done = True

    def expire(self) -> None:
        """The client's deadline passed: the call ends as grpcio's server ends it."""
        self.fail(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")

    def cancel(self) -> None:
        """The call ended early (the client reset it, a failure): stop its work."""
        self._end()
        if self.on_cancel is not None:
            self.on_cancel()
            self.on_cancel = None
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self._wake()

    # -- requests ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.buffer:  # a message arrives in pieces: gathered in place, parsed once whole
            self.buffer += data
            self._grant(len(data))
            if len(self.buffer) < self.needed:
                return None
            data, self.buffer = bytes(self.buffer), b""
        else:
            self._grant(len(data))
        conn, position, end = self.conn, 0, len(data)
        self.needed = 5
        while end - position >= 5:
            flag, length = MESSAGE_PREFIX.unpack_from(data, position)
            if length > conn.max_message:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                return self.fail(code, f"received message larger than max ({length} vs. {conn.max_message})")
            if flag:
                code = grpc.StatusCode.UNIMPLEMENTED.value[0]
                return self.fail(code, "compressed messages are not supported; send identity")
            if end - position - 5 < length:
                self.needed = 5 + length
                break
            message = data[position + 5 : position + 5 + length]
            position += 5 + length
            if self.message is None and self.route.kind != BIDI:
                self.message = message
            elif self.route.kind == BIDI:
                self.requests.append(message)
                self._wake()
            else:
                return self.fail(INTERNAL, "a unary call carries more than one request message")
        if position < end:
            self.buffer = bytearray(data[position:])
        return None

    def _grant(self, size: int) -> None:
        """The peer may send more, unless a stream's reader is ``READ_AHEAD`` messages behind."""
        if self.route.kind == BIDI and len(self.requests) >= READ_AHEAD:
            self.held += size  # granted back when the servicer takes them
        else:
            self.conn.consumed(self.stream, size)

    def end(self) -> None:
        if self.done:
            return None
        if self.buffer:
            return self.fail(INTERNAL, "the stream ended inside a message")
        if self.route.kind == BIDI:
            self.requests.append(None)
            return self._wake()
        if self.message is None:
            return self.fail(INTERNAL, "the call carries no request message")
        try:
            request = self.route.parse(self.message)
        except DecodeError:
            return self.fail(INTERNAL, "the request message could not be parsed")
        if self.route.kind == FAST_INFER:
            self.on_cancel = self.route.handler(request, self)
        else:
            self.task = asyncio.get_running_loop().create_task(self.run(request))
        return None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def incoming(self) -> AsyncIterator[Any]:
        """The stream's request messages as the servicer reads them."""
        while True:
            while not self.requests:
                if self.done:
                    return
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter
            message = self.requests.popleft()
            if message is None:
                return
            if self.held and len(self.requests) < READ_AHEAD:
                self.conn.consumed(self.stream, self.held)
                self.held = 0
            try:
                yield self.route.parse(message)
            except DecodeError:
                self.fail(INTERNAL, "a request message could not be parsed")
                return

    def start(self, handler: Callable[[Any, Call], Any], argument: Any) -> None:
        """Run ``handler``, a unary coroutine method, as this call's task (a callback method whose
        answer must wait for a coroutine)."""
        self.task = asyncio.get_running_loop().create_task(self.run(argument, handler))

    async def run(self, argument: Any, unary: Callable[[Any, Call], Any] | None = None) -> None:
        """A unary or streaming method as a task (``unary``: a unary method other than the route's)."""
        try:
            if unary is not None or self.route.kind == UNARY:
                self.reply(await (unary or self.route.handler)(argument, self))
                return
            async for response in self.route.handler(argument, self):
                self.send_message(response if isinstance(response, bytes) else response.SerializeToString())
                await self.conn.writable(self.stream)
                if self.done:
                    return
            self.finish()
        except Aborted as aborted:
            self.fail(aborted.code, aborted.message)
        except WorkerError as error:
            self.fail(GRPC_STATUS[error.code].value[0], error.message)
        except Exception:
            log.exception("the gRPC method %s failed", getattr(self.route.handler, "__name__", "?"))
            self.fail(INTERNAL, "internal error; the worker's log has the details")
        finally:
            self.task = None  # the task and its call no longer hold each other
