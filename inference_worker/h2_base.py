"""HTTP/2 serving (RFC 9113, prior knowledge, no TLS) on an asyncio protocol: frames, streams, windows.

Written beside ``http_base`` for the same reason: grpcio's server answered
gRPC at about a quarter of our HTTP/1.1 core's rate (bench/RESULTS.md). This
module knows HTTP/2 only; a subclass of :class:`Connection` gives meaning to a
stream's headers and data (``grpc_server``). Frames are parsed with slices of
one buffer per read; what the connection writes during a read (SETTINGS and
PING acknowledgements, window updates, answers) goes out in one write, and
answers completed later in the same loop iteration are written together.

Flow control both ways: the peer's DATA is counted against the windows we
granted, and credit returns to the connection at once and to a stream when
the subclass says the data was consumed (``consumed``), so a stream whose
reader lags stops receiving. What we send waits for the peer's windows in
the stream's queue; past ``MAX_BUFFERED`` bytes waiting on one connection,
new streams are refused, and a stream's sender can wait for room
(``Stream.writable``). A peer that stops reading the socket stops being read.
Protocol violations end the connection with GOAWAY and the error's code.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import Any

from inference_worker.hpack_codec import Decoder, HpackError

log = logging.getLogger("inference_worker.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
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
MAX_CONNECTIONS = 4096
_HEAD = struct.Struct(">IBI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack((len(payload) << 8) | kind, flags, stream_id) + payload


class ConnectionError_(Exception):  # noqa: N801 - ConnectionError is a builtin
    """A connection error: GOAWAY with ``code`` and the connection ends."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One stream: its windows, what waits for them, and the subclass's state (``call``)."""

    __slots__ = ("call", "closed_local", "closed_remote", "free", "id", "pending", "room", "unacked", "window")

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

    def queued(self) -> int:
        return sum(len(data) for data, is_data, _ in self.pending if is_data)


class Connection(asyncio.Protocol):
    """One client connection. Subclasses define ``on_headers``, ``on_data``, ``on_end``, ``on_reset``."""

    def __init__(self, connections: set[Connection], *, max_header_bytes: int) -> None:
        self.connections = connections
        self.max_header_bytes = max_header_bytes
        self.transport: Any = None
        self.decoder = Decoder()
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.max_send_frame = 16384
        self.unacked = 0
        self.buffered = 0
        self.closed = False
        self.going_away = False
        self._buffer = b""
        self._preface = False
        self._block: list[bytes] = []
        self._block_size = 0
        self._block_stream = 0
        self._block_end = False
        self._out: list[bytes] = []
        self._reading = False
        self._flush_scheduled = False
        self._write_paused = False

    # -- what a subclass provides ------------------------------------------------------------
    def on_headers(self, stream: Stream, headers: tuple[tuple[bytes, bytes], ...], end: bool) -> None:
        raise NotImplementedError

    def on_data(self, stream: Stream, data: bytes) -> None:
        raise NotImplementedError

    def on_end(self, stream: Stream) -> None:
        raise NotImplementedError

    def on_reset(self, stream: Stream) -> None:
        """The peer reset the stream, or the connection ended with the stream open."""
        raise NotImplementedError

    def refuse_preface(self, data: bytes) -> None:
        """The peer did not speak HTTP/2 (an HTTP/1.1 request, garbage): answer, then close."""
        self.goaway(PROTOCOL_ERROR, "expected the HTTP/2 connection preface")

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if len(self.connections) >= MAX_CONNECTIONS:
            self.closed = True
            transport.close()
            return
        self.connections.add(self)
        settings = struct.pack(
            ">HIHIHIHI", 0x3, MAX_STREAMS, 0x4, STREAM_WINDOW, 0x5, MAX_FRAME, 0x6, self.max_header_bytes
        )
        update = struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, update))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._wake(stream)
            self.on_reset(stream)
            stream.call = None

    def pause_writing(self) -> None:
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._reading = True
        try:
            self._receive(self._buffer + data if self._buffer else data)
        except ConnectionError_ as exc:
            self.goaway(exc.code, str(exc))
        except HpackError as exc:
            self.goaway(COMPRESSION_ERROR, str(exc))
        finally:
            self._reading = False
            self.flush()

    def _receive(self, data: bytes) -> None:
        position = 0
        if not self._preface:
            if len(data) < len(PREFACE):
                if not PREFACE.startswith(data):
                    return self.refuse_preface(data)
                self._buffer = data
                return None
            if not data.startswith(PREFACE):
                return self.refuse_preface(data)
            self._preface = True
            position = len(PREFACE)
        end = len(data)
        while end - position >= 9 and not self.closed:
            head, flags, stream_id = _HEAD.unpack_from(data, position)
            length = head >> 8
            if length > MAX_FRAME:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds {MAX_FRAME}")
            if end - position - 9 < length:
                break
            payload = data[position + 9 : position + 9 + length]
            position += 9 + length
            self._frame(head & 0xFF, flags, stream_id & MAX_WINDOW, payload)
        self._buffer = data[position:] if position < end else b""
        return None

    # -- frames ------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block_stream and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if stream_id != self._block_stream or not stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without a header block")
            self._fragment(payload, flags)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id or len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR if stream_id == 0 else PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not stream_id or len(payload) != 4:
                raise ConnectionError_(PROTOCOL_ERROR if not stream_id else FRAME_SIZE_ERROR, "bad RST_STREAM")
            self._idle_check(stream_id, "RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                self._forget(stream)
                self.on_reset(stream)
                stream.call = None
        elif kind == PRIORITY:
            if not stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self.reset(stream_id, FRAME_SIZE_ERROR)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams:
                self.close()
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "a client cannot push")
        # other types are extensions: ignored (RFC 9113 section 5.5)

    def _idle_check(self, stream_id: int, what: str) -> None:
        if stream_id > self.last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")

    def _strip(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise ConnectionError_(PROTOCOL_ERROR, "padding exceeds the frame")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        self._idle_check(stream_id, "DATA")
        self.unacked += len(payload)  # every DATA frame counts against the connection's window
        if self.unacked > CONNECTION_WINDOW:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "the peer sent past the connection window")
        if self.unacked >= CONNECTION_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:  # a stream we ended or reset: ignored (RFC 9113 5.1)
            return
        if stream.closed_remote:
            self.reset(stream_id, STREAM_CLOSED)
            self._drop(stream)
            return
        stream.unacked += len(payload)
        if stream.unacked > STREAM_WINDOW:
            self.reset(stream_id, FLOW_CONTROL_ERROR)
            self._drop(stream)
            return
        data = self._strip(flags, payload)
        if len(data) != len(payload):
            self.consumed(stream, len(payload) - len(data))  # padding is consumed at once
        if data:
            self.on_data(stream, data)
        if flags & END_STREAM and stream.id in self.streams:
            stream.closed_remote = True
            self.on_end(stream)

    def consumed(self, stream: Stream, size: int) -> None:
        """The subclass has taken ``size`` bytes of the stream's data: the peer may send more."""
        stream.free += size
        if stream.free >= STREAM_WINDOW // 4 and not stream.closed_remote and stream.id in self.streams:
            self.write(frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", stream.free)))
            stream.unacked -= stream.free
            stream.free = 0

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id or not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        payload = self._strip(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        self._block_stream, self._block_end = stream_id, bool(flags & END_STREAM)
        self._block, self._block_size = [], 0
        self._fragment(payload, flags)

    def _fragment(self, payload: bytes, flags: int) -> None:
        self._block.append(payload)
        self._block_size += len(payload)
        if self._block_size > 4 * self.max_header_bytes:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"a header block exceeds {4 * self.max_header_bytes} bytes")
        if not flags & END_HEADERS:
            return
        stream_id, end = self._block_stream, self._block_end
        block = self._block[0] if len(self._block) == 1 else b"".join(self._block)
        self._block_stream, self._block = 0, []
        headers = self.decoder.decode(block)  # always: the table must stay in step with the peer's
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers
            if not end or stream.closed_remote:
                raise ConnectionError_(PROTOCOL_ERROR, "trailers must end the stream")
            stream.closed_remote = True
            self.on_end(stream)
            return
        if stream_id <= self.last_stream:
            raise ConnectionError_(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self.last_stream = stream_id
        if self.going_away or len(self.streams) >= MAX_STREAMS or self.buffered > MAX_BUFFERED:
            self.reset(stream_id, REFUSED_STREAM)
            return
        stream = self.streams[stream_id] = Stream(stream_id, self.initial_window)
        stream.closed_remote = end
        self.on_headers(stream, headers, end)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta, self.initial_window = value - self.initial_window, value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == 0x5:
                if not 16384 <= value <= (1 << 24) - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.max_send_frame = value
            elif key == 0x2 and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
        self.write(frame(SETTINGS, ACK, 0))
        for stream in list(self.streams.values()):
            self._send_pending(stream)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a length other than 4")
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "a connection window increment of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "the connection window exceeds 2^31-1")
            for stream in list(self.streams.values()):
                if stream.pending:
                    self._send_pending(stream)
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

    # -- sending -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Write now if reading (flushed after the read), else at the end of this loop iteration."""
        self._out.append(data)
        if not self._reading and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.transport.is_closing():
            out, self._out = self._out, []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        else:
            self._out.clear()

    def send(self, stream: Stream, headers: bytes | None, data: bytes | None, trailers: bytes | None) -> None:
        """Send a header block, DATA and a trailer block (each optional); the trailers end the stream.

        DATA beyond the peer's windows waits in the stream's queue, and so does what follows it.
        """
        if stream.closed_local or self.closed:
            return
        size = 0 if data is None else len(data)
        if not stream.pending and size <= min(self.send_window, stream.window, self.max_send_frame):
            out = b"" if headers is None else frame(HEADERS, END_HEADERS, stream.id, headers)
            if size:
                out += frame(DATA, 0, stream.id, data)  # type: ignore[arg-type]
                self.send_window -= size
                stream.window -= size
            if trailers is not None:
                out += frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers)
                stream.closed_local = True
            self.write(out)
            if stream.closed_local:
                self._finish(stream)
            return
        if headers is not None:
            self._queue(stream, headers, False, False)
        if data:
            self._queue(stream, data, True, False)
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
            self.write(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[start : start + size]))

    async def writable(self, stream: Stream) -> None:
        """Wait while more than ``STREAM_HIGH_WATER`` bytes of the stream wait for the peer's windows."""
        while stream.queued() >= STREAM_HIGH_WATER and stream.id in self.streams and not self.closed:
            stream.room = asyncio.Event()
            await stream.room.wait()

    def _finish(self, stream: Stream) -> None:
        """Our side ended the stream; if the peer has not, it need not go on sending (RFC 9113 8.1)."""
        if self.streams.pop(stream.id, None) is None:
            return
        stream.call = None  # no cycle left for the garbage collector (its pauses are the p99)
        if not stream.closed_remote:
            self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))
        if self.going_away and not self.streams:
            self.close()

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
        self.close()

    def shut_down(self) -> None:
        """Stop taking streams (GOAWAY, NO_ERROR); close once the open ones have ended."""
        if not self.going_away and not self.closed:
            self.going_away = True
            self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, NO_ERROR)))
            if not self.streams:
                self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.flush()
            self.transport.close()
