"""HTTP/2 serving (RFC 9113, prior knowledge, no TLS) on an asyncio protocol: frames, streams, windows.

Written beside ``http_base`` for the same reason: grpcio's server answered gRPC at about a
quarter of our HTTP/1.1 core's rate (bench/RESULTS.md). This module knows HTTP/2 only; a
subclass of :class:`Connection` gives meaning to a stream's headers and data (``grpc_server``).
Frames are parsed with slices of one buffer per read; what the connection writes during a read
(SETTINGS and PING acknowledgements, window updates, answers) goes out in one write (``h2_send``).

Flow control both ways: the peer's DATA is counted against the windows we granted, and credit
returns to the connection at once and to a stream when the subclass says the data was consumed
(``consumed``), so a stream whose reader lags stops receiving. What we send waits for the peer's
windows in the stream's queue; past ``MAX_BUFFERED`` bytes waiting on one connection, new streams
are refused, and a stream's sender can wait for room (``writable``). A peer that stops reading
the socket stops being read.
Protocol violations end the connection with GOAWAY and the error's code, and so does a rapid-reset
flood (CVE-2023-44487): past ``MAX_RESETS`` streams reset while open, when they are most of those the
peer opened. After a GOAWAY the connection lingers: what the peer still sends is read and dropped, so
it reads the GOAWAY, not a reset. A header block past twice ``max_header_bytes`` ends the connection
(ENHANCE_YOUR_CALM) as it arrives; one whose fields pass ``max_header_bytes`` is refused
(``on_oversize``) and the connection goes on (``hpack_codec.Decoder`` keeps the table in step).
"""

from __future__ import annotations

import asyncio
import struct

from inference_worker.h2_send import (
    ACK,
    COMPRESSION_ERROR,
    CONNECTION_WINDOW,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_BUFFERED,
    MAX_FRAME,
    MAX_STREAMS,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    STREAM_WINDOW,
    WINDOW_UPDATE,
    ProtocolFault,
    Sender,
    Stream,
    frame,
)  # fmt: skip
from inference_worker.hpack_codec import Decoder, HpackError, HpackLimit, TooLarge
from inference_worker.http_base import MAX_CONNECTIONS

_HEAD = struct.Struct(">IBI")
MAX_RESETS = 1000


class Connection(Sender, asyncio.Protocol):
    """One client connection. Subclasses define ``on_headers``, ``on_data``, ``on_end``, ``on_reset``."""

    def __init__(self, connections: set[Connection], *, max_header_bytes: int, client: bool = False) -> None:
        super().__init__()
        self.client = client  # we open the streams; HEADERS on them are answers
        self.peer_max_streams = MAX_STREAMS
        self.connections = connections
        self.max_header_bytes = max_header_bytes
        self.decoder = Decoder(max_list_size=max_header_bytes)
        self.settled = client  # the peer's preface and SETTINGS have arrived
        self.received = 0  # HEADERS and DATA frames: the peer's activity (PINGs are not)
        self.unacked = 0
        """DATA bytes received on the connection and not granted back yet."""
        self.resets = 0
        """Streams the peer reset while open: past ``MAX_RESETS``, if most were, it is a flood."""
        self._buffer = bytearray()
        self._preface = client
        self._needed = 0
        """Bytes ``_buffer`` must hold before parsing is worth trying again (a whole frame)."""
        self._block: list[bytes] = []
        self._block_size = 0
        self._block_stream = 0
        self._block_end = False

    # -- what a subclass provides ------------------------------------------------------------
    def on_headers(self, stream: Stream, headers: tuple[tuple[bytes, bytes], ...], end: bool) -> None:
        raise NotImplementedError

    def on_data(self, stream: Stream, data: bytes) -> None:
        raise NotImplementedError

    def on_end(self, stream: Stream) -> None:
        raise NotImplementedError

    def on_oversize(self, stream: Stream) -> None:
        """The stream's header block decodes past ``max_header_bytes``: its fields were not kept."""
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
        if self.client:
            self.transport.write(PREFACE + self._settings_frames())

    def _settings_frames(self) -> bytes:
        """Our SETTINGS and window; a server's follow the client's preface (HTTP/1.1 gets a plain answer)."""
        first = (0x2, 0) if self.client else (0x3, MAX_STREAMS)  # no push; or the streams we take
        settings = struct.pack(
            ">HIHIHIHI", *first, 0x4, STREAM_WINDOW, 0x5, MAX_FRAME, 0x6, self.max_header_bytes
        )
        update = struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW)
        return frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, update)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._wake(stream)
            self.on_reset(stream)
            stream.call = None

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.drained += 1
        if not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:  # lingering after a GOAWAY: dropped
            return
        if self._buffer:  # a frame arrives in pieces: gathered in place, parsed once whole
            self._buffer += data
            if len(self._buffer) < self._needed:
                return
            data, self._buffer = bytes(self._buffer), bytearray()
        self._reading = True
        scope = self.scope
        outer = scope.begin() if scope is not None else False
        try:
            self._receive(data)
        except ProtocolFault as exc:
            self.goaway(exc.code, str(exc))
        except HpackLimit as exc:
            self.goaway(ENHANCE_YOUR_CALM, str(exc))
        except HpackError as exc:
            self.goaway(COMPRESSION_ERROR, str(exc))
        finally:
            self._reading = False
            self.flush()
            if outer and scope is not None:
                scope.end()

    def _receive(self, data: bytes) -> None:
        position = 0
        if not self._preface:
            if len(data) < len(PREFACE):
                if not PREFACE.startswith(data):
                    return self.refuse_preface(data)
                self._buffer, self._needed = bytearray(data), len(PREFACE)
                return None
            if not data.startswith(PREFACE):
                return self.refuse_preface(data)
            self._preface = True
            self.write(self._settings_frames())
            position = len(PREFACE)
        end = len(data)
        self._needed = 9
        while end - position >= 9 and not self.closed:
            head, flags, stream_id = _HEAD.unpack_from(data, position)
            length = head >> 8
            if length > MAX_FRAME:
                raise ProtocolFault(FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds {MAX_FRAME}")
            if end - position - 9 < length:
                self._needed = 9 + length
                break
            payload = data[position + 9 : position + 9 + length]
            position += 9 + length
            self._frame(head & 0xFF, flags, stream_id & MAX_WINDOW, payload)
        if position < end and not self.closed:
            self._buffer = bytearray(data[position:])
        return None

    # -- frames ------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block_stream and kind != CONTINUATION:
            raise ProtocolFault(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if stream_id != self._block_stream or not stream_id:
                raise ProtocolFault(PROTOCOL_ERROR, "CONTINUATION without a header block")
            self._fragment(payload, flags)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id or len(payload) != 8:
                raise ProtocolFault(FRAME_SIZE_ERROR if stream_id == 0 else PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not stream_id or len(payload) != 4:
                raise ProtocolFault(PROTOCOL_ERROR if not stream_id else FRAME_SIZE_ERROR, "bad RST_STREAM")
            self._idle_check(stream_id, "RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                self.resets += 1
                if self.resets > MAX_RESETS and self.resets * 2 > self.last_stream // 2:
                    raise ProtocolFault(ENHANCE_YOUR_CALM, "most streams were reset (a rapid reset flood)")
                stream.reset_code = int.from_bytes(payload, "big")
                self._forget(stream)
                self.on_reset(stream)
                stream.call = None
        elif kind == PRIORITY:
            if not stream_id:
                raise ProtocolFault(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self.reset(stream_id, FRAME_SIZE_ERROR)
        elif kind == GOAWAY:
            self.going_away = True
            if self.client and len(payload) >= 8:  # streams past the last it took never ran: refused
                last = int.from_bytes(payload[:4], "big") & MAX_WINDOW
                for stream in [s for s in self.streams.values() if s.id > last]:
                    stream.reset_code = REFUSED_STREAM
                    self._drop(stream)
            if not self.streams:
                self.close()
        elif kind == PUSH_PROMISE:
            raise ProtocolFault(PROTOCOL_ERROR, "a client cannot push")
        # other types are extensions: ignored (RFC 9113 section 5.5)

    def _strip(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise ProtocolFault(PROTOCOL_ERROR, "padding exceeds the frame")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolFault(PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self.last_stream:
            raise ProtocolFault(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        size = len(payload)
        self.received += 1
        self.unacked += size  # every DATA frame counts against the connection's window
        if self.unacked >= CONNECTION_WINDOW // 2:
            if self.unacked > CONNECTION_WINDOW:
                raise ProtocolFault(FLOW_CONTROL_ERROR, "the peer sent past the connection window")
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:  # a stream we ended or reset: ignored (RFC 9113 5.1)
            return
        if stream.closed_remote:
            self.reset(stream_id, STREAM_CLOSED)
            self._drop(stream)
            return
        stream.unacked += size
        if stream.unacked > STREAM_WINDOW:
            self.reset(stream_id, FLOW_CONTROL_ERROR)
            self._drop(stream)
            return
        if flags & PADDED:
            payload = self._strip(flags, payload)
            self.consumed(stream, size - len(payload))  # padding is consumed at once
        if payload:
            self.on_data(stream, payload)
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
            raise ProtocolFault(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & (PADDED | PRIORITY_FLAG):
            payload = self._strip(flags, payload)
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise ProtocolFault(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                payload = payload[5:]
        if flags & END_HEADERS:  # the whole block in one frame (the usual case)
            self._check_block_size(len(payload))
            return self._block_done(stream_id, bool(flags & END_STREAM), payload)
        self._block_stream, self._block_end = stream_id, bool(flags & END_STREAM)
        self._block, self._block_size = [], 0
        return self._fragment(payload, flags)

    def _check_block_size(self, size: int) -> None:
        limit = 2 * self.max_header_bytes  # past it, not a client whose metadata overshot the limit
        if size > limit:
            raise ProtocolFault(ENHANCE_YOUR_CALM, f"a header block exceeds {limit} bytes")

    def _fragment(self, payload: bytes, flags: int) -> None:
        self._block.append(payload)
        self._block_size += len(payload)
        self._check_block_size(self._block_size)
        if not flags & END_HEADERS:
            return
        stream_id, block = self._block_stream, b"".join(self._block)
        self._block_stream, self._block = 0, []
        self._block_done(stream_id, self._block_end, block)

    def _block_done(self, stream_id: int, end: bool, block: bytes) -> None:
        """A whole header block of ``stream_id``: a new stream's request, trailers, or an answer."""
        self.received += 1
        try:
            headers: tuple[tuple[bytes, bytes], ...] | None = self.decoder.decode(block)  # always (the table)
        except TooLarge:  # refused; the table is in step with the peer's all the same
            headers = None
        stream = self.streams.get(stream_id)
        if self.client:  # the answer's headers, or its trailers
            if stream is None:
                if stream_id > self.last_stream:
                    raise ProtocolFault(PROTOCOL_ERROR, f"HEADERS on stream {stream_id} we never opened")
                return  # a stream we reset
            stream.closed_remote = end
        elif stream is not None:  # trailers (their fields are not read)
            if not end or stream.closed_remote:
                raise ProtocolFault(PROTOCOL_ERROR, "trailers must end the stream")
            stream.closed_remote = True
            self.on_end(stream)
            return
        else:
            if stream_id <= self.last_stream:
                raise ProtocolFault(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
            self.last_stream = stream_id
            if self.going_away or len(self.streams) >= MAX_STREAMS or self.buffered > MAX_BUFFERED:
                self.reset(stream_id, REFUSED_STREAM)
                return
            stream = self.streams[stream_id] = Stream(stream_id, self.initial_window)
            stream.closed_remote = end
        if headers is None:
            self.on_oversize(stream)
        else:
            self.on_headers(stream, headers, end)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolFault(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolFault(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ProtocolFault(FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        self.settled = True
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise ProtocolFault(FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta, self.initial_window = value - self.initial_window, value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == 0x3:
                self.peer_max_streams = value
            elif key == 0x5:
                if not 16384 <= value <= (1 << 24) - 1:
                    raise ProtocolFault(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.max_send_frame = value
            elif key == 0x2 and value > 1:
                raise ProtocolFault(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
        self.write(frame(SETTINGS, ACK, 0))
        for stream in list(self.streams.values()):
            self._send_pending(stream)
