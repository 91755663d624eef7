"""The sending half of an HTTP/2 connection (``h2_base``): frames out, the peer's windows, stream ends.

What the connection writes while it reads (acknowledgements, window
updates, answers made at once) goes out in one write after the read, and
answers completed later in the same loop iteration are written together.
Connections that relay between them (the gateway's client and replica sides)
share a ``ReadScope``: what one of them reads makes the others write, and
that goes out as soon as the read is done, not at the end of the loop
iteration (after every other socket's read): a replica starts on a client's
requests while the gateway reads the next client's.
DATA beyond the peer's windows waits in its stream's queue (and whatever
follows it on that stream); ``MAX_BUFFERED`` bytes waiting on a connection
make it refuse new streams, and a stream's sender may wait for room
(``Sender.writable``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import Any

from inference_worker.http_base import LINGER_S

log = logging.getLogger("inference_worker.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535
STREAM_WINDOW = 1 << 20
"""What each stream may send before we grant more (SETTINGS_INITIAL_WINDOW_SIZE)."""
CONNECTION_WINDOW = 16 << 20
MAX_FRAME = 1 << 20
"""The largest frame we accept (SETTINGS_MAX_FRAME_SIZE); we send at most the peer's."""
MAX_STREAMS = 1024
MAX_BUFFERED = 16 << 20
"""Bytes waiting for the peer's windows on one connection before new streams are refused."""
STREAM_HIGH_WATER = 1 << 20
_HEAD = struct.Struct(">IBI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack((len(payload) << 8) | kind, flags, stream_id) + payload


class ProtocolFault(Exception):
    """A connection error: GOAWAY with ``code`` and the connection ends."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One stream: its windows, what waits for them, and the subclass's state (``call``)."""

    __slots__ = (
        "call",
        "closed_local",
        "closed_remote",
        "free",
        "id",
        "pending",
        "reset_code",
        "room",
        "unacked",
        "window",
    )

    def __init__(self, stream_id: int, window: int) -> None:
        self.id = stream_id
        self.window = window
        self.unacked = 0
        """Bytes the peer sent that we have not granted back yet (``free`` of them consumed)."""
        self.free = 0
        self.closed_local = False
        self.closed_remote = False
        self.pending: deque[tuple[bytes, bool, bool]] = deque()
        """(bytes, is DATA, ends the stream) waiting for the windows (headers wait behind data)."""
        self.room: asyncio.Event | None = None
        self.call: Any = None
        self.reset_code: int | None = None
        """The peer's RST_STREAM code (REFUSED_STREAM past its GOAWAY), if it reset the stream."""

    def queued(self) -> int:
        return sum(len(data) for data, is_data, _ in self.pending if is_data)


class ReadScope:
    """Connections on one loop whose writes, made while one of them reads, go out when that read ends."""

    __slots__ = ("pending", "reading")

    def __init__(self) -> None:
        self.reading = False
        self.pending: list[Sender] = []

    def begin(self) -> bool:
        """A read starts; False when one is already in progress (the outer one flushes)."""
        if self.reading:
            return False
        self.reading = True
        return True

    def end(self) -> None:
        """The read is done: write what it made the other connections send."""
        self.reading = False
        while self.pending:
            pending, self.pending = self.pending, []
            for sender in pending:
                try:
                    sender.flush()
                except Exception:  # one broken transport must not leave the others unwritten
                    log.exception("writing to a connection failed")


class Sender:
    """A connection's transport, streams and send windows, and everything it writes."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.max_send_frame = 16384
        self.buffered = 0
        self.closed = False
        self.going_away = False
        self.client = False
        self._out: list[bytes] = []
        self._reading = False
        self._flush_scheduled = False
        self.scope: ReadScope | None = None
        self.drained = 0
        """The peer took some of what waits for it (a WINDOW_UPDATE, or the socket's buffer drained)."""

    def on_reset(self, stream: Stream) -> None:
        """The peer reset the stream, or the connection ended with the stream open."""
        raise NotImplementedError

    # -- sending -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data``: written after the read in progress (this connection's, or one of its
        ``scope``), at once when no other stream waits for an answer, else at the end of this loop
        iteration (with the other answers made in it)."""
        if self._reading or self._flush_scheduled:
            self._out.append(data)
            return
        if len(self.streams) <= 1:
            if not self._out and not self.transport.is_closing():
                self.transport.write(data)
                return
            self._out.append(data)
            self.flush()
            return
        self._out.append(data)
        self._flush_scheduled = True
        scope = self.scope
        if scope is not None and scope.reading:
            scope.pending.append(self)
        else:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.transport.is_closing():
            out, self._out = self._out, []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        else:
            self._out.clear()

    def send(
        self,
        stream: Stream,
        headers: bytes | None,
        data: bytes | None,
        trailers: bytes | None,
        *,
        end: bool = False,
    ) -> None:
        """Send a header block, DATA and a trailer block (each optional); trailers end the stream, and
        so does the DATA when ``end`` (a client's request).

        DATA beyond the peer's windows waits in the stream's queue, and so does what follows it.
        """
        if stream.closed_local or self.closed:
            return
        size = 0 if data is None else len(data)
        if not stream.pending and size <= min(self.send_window, stream.window, self.max_send_frame):
            sid, pack = stream.id, _HEAD.pack  # the frames joined once: one copy of the data
            parts: list[bytes] = []
            if headers is not None:
                parts += (pack((len(headers) << 8) | HEADERS, END_HEADERS, sid), headers)
            if size or end:
                parts += (pack((size << 8) | DATA, END_STREAM if end else 0, sid), data or b"")
                self.send_window -= size
                stream.window -= size
                stream.closed_local = end
            if trailers is not None:
                parts += (pack((len(trailers) << 8) | HEADERS, END_HEADERS | END_STREAM, sid), trailers)
                stream.closed_local = True
            self.write(b"".join(parts))
            if stream.closed_local:
                self._finish(stream)
            return
        if headers is not None:
            self._queue(stream, headers, False, False)
        if data or end:
            self._queue(stream, data or b"", True, end)
        if trailers is not None:
            self._queue(stream, trailers, False, True)
        self._send_pending(stream)

    def _queue(self, stream: Stream, data: bytes, is_data: bool, end: bool) -> None:
        stream.pending.append((data, is_data, end))
        if is_data:
            self.buffered += len(data)
        if end:
            stream.closed_local = True

    def _send_pending(self, stream: Stream) -> None:
        pending = stream.pending
        while pending:
            data, is_data, end = pending[0]
            if not is_data:
                pending.popleft()
                self._header_frames(stream.id, data, end)
                continue
            size = len(data)
            allowed = min(self.send_window, stream.window, self.max_send_frame)
            if size > allowed:
                if allowed <= 0:
                    break
                self.write(frame(DATA, 0, stream.id, data[:allowed]))
                pending[0] = (data[allowed:], True, end)
                size = allowed
            else:
                pending.popleft()
                self.write(frame(DATA, END_STREAM if end else 0, stream.id, data))
            self.send_window -= size
            stream.window -= size
            self.buffered -= size
        if stream.room is not None and stream.queued() < STREAM_HIGH_WATER:
            stream.room.set()
        if not pending and stream.closed_local:
            self._finish(stream)

    def _header_frames(self, stream_id: int, block: bytes, end: bool) -> None:
        flags = END_STREAM if end else 0
        size = self.max_send_frame
        if len(block) <= size:
            self.write(frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        self.write(frame(HEADERS, flags, stream_id, block[:size]))
        for start in range(size, len(block), size):
            last = start + size >= len(block)
            self.write(
                frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[start : start + size])
            )

    async def writable(self, stream: Stream) -> None:
        """Wait while more than ``STREAM_HIGH_WATER`` bytes of the stream wait for the peer's windows."""
        while stream.queued() >= STREAM_HIGH_WATER and stream.id in self.streams and not self.closed:
            stream.room = asyncio.Event()
            await stream.room.wait()

    def _finish(self, stream: Stream) -> None:
        """Our side ended the stream. A server's answer is complete: if the peer is still sending, it
        need not go on (RFC 9113 8.1). A client's stream ends with the answer (``release``)."""
        if self.client:
            if stream.closed_remote:
                self.release(stream)
            return
        if self.streams.get(stream.id) is not stream:
            return
        if not stream.closed_remote:
            self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
        self.release(stream)

    def release(self, stream: Stream) -> None:
        """Forget an ended stream (and close a connection going away once none is left)."""
        if self.streams.pop(stream.id, None) is None:
            return
        stream.call = None  # no cycle left for the garbage collector (its pauses are the p99)
        if self.going_away and not self.streams:
            self.close()

    # -- the peer's windows ------------------------------------------------------------------
    def _idle_check(self, stream_id: int, what: str) -> None:
        if stream_id > self.last_stream:
            raise ProtocolFault(PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolFault(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a length other than 4")
        self.drained += 1
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise ProtocolFault(PROTOCOL_ERROR, "a connection window increment of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolFault(FLOW_CONTROL_ERROR, "the connection window exceeds 2^31-1")
            for waiting in list(self.streams.values()):
                if waiting.pending:
                    self._send_pending(waiting)
            return
        self._idle_check(stream_id, "WINDOW_UPDATE")
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not increment:
            self.reset(stream_id, PROTOCOL_ERROR)
            self._drop(stream)
            return
        stream.window += increment
        if stream.window > MAX_WINDOW:
            self.reset(stream_id, FLOW_CONTROL_ERROR)
            self._drop(stream)
            return
        self._send_pending(stream)

    # -- ending streams and the connection ---------------------------------------------------
    def reset(self, stream_id: int, code: int) -> None:
        self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))

    def _drop(self, stream: Stream) -> None:
        """We reset ``stream``: forget it and tell the subclass."""
        if self.streams.pop(stream.id, None) is not None:
            self._forget(stream)
            self.on_reset(stream)
            stream.call = None

    def _forget(self, stream: Stream) -> None:
        self.buffered -= stream.queued()
        stream.pending.clear()
        stream.closed_local = True
        self._wake(stream)

    @staticmethod
    def _wake(stream: Stream) -> None:
        if stream.room is not None:
            stream.room.set()

    def goaway(self, code: int, message: str) -> None:
        """End the connection with GOAWAY: ``code`` and ``message`` as its debug data."""
        if code != NO_ERROR:
            log.info("HTTP/2 connection error %d: %s", code, message)
        debug = message.encode()[:256]
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code) + debug))
        self.close(linger=True)

    def shut_down(self) -> None:
        """Stop taking streams (GOAWAY, NO_ERROR); close once the open ones have ended."""
        if not self.going_away and not self.closed:
            self.going_away = True
            self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, NO_ERROR)))
            if not self.streams:
                self.close()

    def stuck(self) -> bool:
        """Output waits for the peer: in the socket's buffer, or in a stream's queue for its windows."""
        if self.transport.get_write_buffer_size():
            return True
        return any(stream.pending for stream in self.streams.values())

    def close(self, *, linger: bool = False) -> None:
        """Close; ``linger``: send what is queued and our end of the stream, then read and drop what
        the peer still sends for ``LINGER_S`` (closing on unread data would reset the connection,
        and the peer would lose the GOAWAY saying why)."""
        if not self.closed:
            self.closed = True
            self.flush()
            transport = self.transport
            if linger and transport.can_write_eof():
                transport.write_eof()
                asyncio.get_running_loop().call_later(LINGER_S, transport.close)
            else:
                transport.close()
