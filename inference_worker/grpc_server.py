"""The worker's gRPC server: the servicer's RPCs and gRPC health over our HTTP/2 core (``h2_base``).

Replaces grpcio's server, which answered at about a quarter of the HTTP/1.1
core's rate (bench/RESULTS.md). Every method of ``inference.GRPCInferenceService``
the servicer defines is routed by its path, with its request and response
types from the protocol's descriptor; ``ModelInfer`` answers from the
batcher's callback (``InferenceServicer.infer``) with no task per call, the
other RPCs run as tasks. Messages use gRPC's framing (5-byte prefix); a
compressed message is ``UNIMPLEMENTED`` (we never announce an encoding), one
over ``max_grpc_message_bytes`` is ``RESOURCE_EXHAUSTED``, metadata over
``max_header_bytes`` too. ``grpc-timeout`` becomes the call's deadline, read
by the servicer as grpc.aio's ``time_remaining()`` was; when it passes, the
call ends with ``DEADLINE_EXCEEDED`` and its work is cancelled, as grpcio's
server does. Answers reuse
precomputed header blocks; a stream's next answer waits while the client
reads too slowly (``h2_base`` flow control). A stream request the servicer
has not taken holds back the stream's window once ``READ_AHEAD`` are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from inference_worker import build_protos, h2_base
from inference_worker.config import Limits
from inference_worker.dataplane import DataPlane
from inference_worker.errors import GRPC_STATUS, WorkerError
from inference_worker.grpc_api import SERVICE, InferenceServicer
from inference_worker.h2_send import Stream
from inference_worker.health_service import HEALTH_SERVICE, Health
from inference_worker.hpack_codec import literal

log = logging.getLogger("inference_worker.grpc")

READ_AHEAD = 64
_HEADERS = b"\x88" + literal(b"content-type", b"application/grpc")  # \x88: ":status: 200", indexed
_OK = literal(b"grpc-status", b"0")
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNARY, SERVER_STREAM, BIDI, FAST_INFER = range(4)


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

    __slots__ = ("handler", "kind", "request_type")

    def __init__(self, kind: int, request_type: Any, handler: Callable[..., Any]) -> None:
        self.kind = kind
        self.request_type = request_type
        self.handler = handler


class Call:
    """One RPC on one stream: its messages, deadline and outcome; the servicer's ``CallContext``."""

    __slots__ = (
        "buffer", "conn", "deadline", "done", "held", "message", "needed", "on_cancel", "requests", "route",
        "sent_headers", "stream", "task", "timer", "waiter",
    )  # fmt: skip

    def __init__(self, conn: GrpcConnection, stream: Stream, route: Route, deadline: float | None) -> None:
        self.conn = conn
        self.stream = stream
        self.route = route
        self.deadline = deadline
        self.buffer = bytearray()
        self.needed = 0
        self.message: bytes | None = None
        self.requests: deque[bytes | None] = deque()
        self.held = 0
        self.waiter: asyncio.Future[None] | None = None
        self.sent_headers = False
        self.done = False
        self.on_cancel: Callable[[], None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- CallContext ---------------------------------------------------------------------------
    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code.value[0], details)

    # -- answers -------------------------------------------------------------------------------
    def reply(self, result: Any) -> None:
        """A unary answer: the response message, or a ``WorkerError``."""
        if self.done:
            return None
        self.on_cancel = None
        if isinstance(result, WorkerError):
            return self.fail(GRPC_STATUS[result.code].value[0], result.message)
        payload = result.SerializeToString()
        if len(payload) > self.conn.max_message:
            return self.fail(
                grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "the response exceeds the size limit"
            )
        self._end()
        head = None if self.sent_headers else _HEADERS
        self.conn.send(self.stream, head, b"\x00" + len(payload).to_bytes(4, "big") + payload, _OK)
        return None

    def send_message(self, payload: bytes) -> None:
        if not self.done:
            head = None if self.sent_headers else _HEADERS
            self.sent_headers = True
            self.conn.send(self.stream, head, b"\x00" + len(payload).to_bytes(4, "big") + payload, None)

    def finish(self) -> None:
        if not self.done:
            self._end()
            self.conn.send(self.stream, None if self.sent_headers else _HEADERS, None, _OK)

    def fail(self, code: int, message: str) -> None:
        if not self.done:
            self._end()
            trailers = status_block(code, message)
            self.conn.send(self.stream, None, None, trailers if self.sent_headers else _HEADERS + trailers)
            self.cancel()

    def _end(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        """The client's deadline passed: the call ends as grpcio's server ends it."""
        self.timer = None
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
            data, self.buffer = bytes(self.buffer), bytearray()
        else:
            self._grant(len(data))
        conn, position, end = self.conn, 0, len(data)
        self.needed = 5
        while end - position >= 5:
            flag, length = data[position], int.from_bytes(data[position + 1 : position + 5], "big")
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
            if self.route.kind == BIDI:
                self.requests.append(message)
                self._wake()
            elif self.message is not None:
                return self.fail(_INTERNAL, "a unary call carries more than one request message")
            else:
                self.message = message
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
            return self.fail(_INTERNAL, "the stream ended inside a message")
        if self.route.kind == BIDI:
            self.requests.append(None)
            return self._wake()
        if self.message is None:
            return self.fail(_INTERNAL, "the call carries no request message")
        try:
            request = self.route.request_type.FromString(self.message)
        except DecodeError:
            return self.fail(_INTERNAL, "the request message could not be parsed")
        if self.route.kind == FAST_INFER:
            self.on_cancel = self.route.handler(request, self.time_remaining(), self.reply)
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
                yield self.route.request_type.FromString(message)
            except DecodeError:
                self.fail(_INTERNAL, "a request message could not be parsed")
                return

    async def run(self, argument: Any) -> None:
        """A unary or streaming method as a task."""
        try:
            if self.route.kind == UNARY:
                self.reply(await self.route.handler(argument, self))
                return
            async for response in self.route.handler(argument, self):
                self.send_message(response.SerializeToString())
                await self.conn.writable(self.stream)
                if self.done:
                    return
            self.finish()
        except Aborted as aborted:
            self.fail(aborted.code, aborted.message)
        except WorkerError as error:
            self.fail(GRPC_STATUS[error.code].value[0], error.message)
        except Exception:
            log.exception("the gRPC method %s failed", type(self.route.handler).__name__)
            self.fail(_INTERNAL, "internal error; the worker's log has the details")


class GrpcConnection(h2_base.Connection):
    """One client connection: streams become calls of the server's routes."""

    def __init__(self, server: GrpcServer) -> None:
        super().__init__(server.connections, max_header_bytes=server.limits.max_header_bytes)
        self.routes = server.routes
        self.max_message = server.limits.max_grpc_message_bytes
        self._heads: dict[
            tuple[tuple[bytes, bytes], ...], tuple[Route | None, float | None, bytes | None]
        ] = {}

    def on_headers(self, stream: Stream, headers: tuple[tuple[bytes, bytes], ...], end: bool) -> None:
        head = self._heads.get(headers)  # clients repeat their header block: read it once
        if head is None:
            head = self._read_head(headers)
            if len(self._heads) >= 256:
                self._heads.clear()
            self._heads[headers] = head
        route, timeout, refusal = head
        if refusal is not None:
            self.send(stream, None, None, refusal)
            return
        assert route is not None  # noqa: S101 - a head without a route has a refusal
        deadline = None if timeout is None else time.monotonic() + timeout
        call = stream.call = Call(self, stream, route, deadline)
        if timeout is not None:
            call.timer = asyncio.get_running_loop().call_later(timeout, call.expire)
        if route.kind == BIDI:
            call.task = asyncio.get_running_loop().create_task(call.run(call.incoming()))
        if end:
            call.end()

    def _read_head(
        self, headers: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[Route | None, float | None, bytes | None]:
        """The call's route and timeout, or the header block that refuses it."""
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
            return None, None, literal(b":status", b"405" if method != b"POST" else b"415")
        route = self.routes.get(path)
        if size > self.max_header_bytes:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            return None, None, _HEADERS + status_block(code.value[0], "the call's metadata is too large")
        if route is None:
            message = f"unknown method {path.decode('latin-1')[:200]}"
            return None, None, _HEADERS + status_block(grpc.StatusCode.UNIMPLEMENTED.value[0], message)
        match = _TIMEOUT.fullmatch(timeout) if timeout else None
        return route, None if match is None else int(match[1]) * _UNITS[match[2]], None

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


class GrpcServer:
    """Listening socket, connections and routes: the inference service and gRPC health."""

    def __init__(self, dataplane: DataPlane, limits: Limits) -> None:
        pb2, _ = build_protos.load()
        self.limits = limits
        self.connections: set[h2_base.Connection] = set()
        self.servicer = InferenceServicer(dataplane, limits, pb2)
        self.health = Health()
        self.routes: dict[bytes, Route] = {}
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
        self._server: asyncio.AbstractServer | None = None

    def add(self, path: str, kind: int, request_type: Any, handler: Callable[..., Any]) -> None:
        self.routes[path.encode()] = Route(kind, request_type, handler)

    async def start(self, host: str, port: int) -> int:
        """Listen and serve; returns the bound port. Health starts NOT_SERVING."""
        await self.set_serving(False)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GrpcConnection(self), host, port, backlog=2048)
        return int(self._server.sockets[0].getsockname()[1])

    async def set_serving(self, serving: bool) -> None:
        for service in ("", SERVICE):
            self.health.set(service, serving)

    async def drain(self) -> None:
        """Health turns NOT_SERVING for good (watchers are told at once)."""
        self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """No new connections or calls; calls in flight get ``grace`` seconds, then connections close."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shut_down()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # connection_lost runs: calls left are cancelled
