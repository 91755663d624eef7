"""A raw HTTP/2 client on a socket, for sending what stock gRPC clients never send.

It speaks just enough to drive the worker's gRPC server frame by frame:
the preface, SETTINGS, HEADERS with literal fields, DATA, RST_STREAM,
WINDOW_UPDATE, and reading frames back with their header blocks decoded.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import pytest

from inference_worker import hpack_codec
from inference_worker.hpack_codec import Decoder, literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS = 0x1, 0x4
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", (len(payload) << 8) | kind, flags, stream_id) + payload


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def request_headers(path: str = INFER_PATH, **extra: str) -> bytes:
    fields = {":method": "POST", ":scheme": "http", ":path": path, ":authority": "worker"}
    fields |= {"content-type": "application/grpc", "te": "trailers"}
    fields |= {name.replace("_", "-"): value for name, value in extra.items()}
    return b"".join(literal(name.encode(), value.encode()) for name, value in fields.items())


class H2Client:
    """One connection; frames in and out, header blocks decoded as they arrive."""

    def __init__(self, port: int, *, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = Decoder()
        self.buffer = b""
        payload = b"".join(struct.pack(">HI", key, value) for key, value in (settings or {}).items())
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, payload))

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def call(self, stream_id: int, message: bytes, **headers: str) -> None:
        """A whole unary call: HEADERS, then the framed message ending the stream."""
        self.send(
            frame(HEADERS, END_HEADERS, stream_id, request_headers(**headers)),
            frame(DATA, END_STREAM, stream_id, grpc_message(message)),
        )

    def read(self, timeout: float = 10.0) -> Frame | None:
        """The next frame, or None once the server has closed the connection."""
        deadline = time.monotonic() + timeout
        while len(self.buffer) < 9 or len(self.buffer) < 9 + (int.from_bytes(self.buffer[:3], "big")):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        length = int.from_bytes(self.buffer[:3], "big")
        kind, flags = self.buffer[3], self.buffer[4]
        stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
        payload, self.buffer = self.buffer[9 : 9 + length], self.buffer[9 + length :]
        got = Frame(kind, flags, stream_id, payload)
        if kind == HEADERS:
            got.headers = {n.decode(): v.decode() for n, v in self.decoder.decode(payload)}
        return got

    def until(self, kind: int, stream_id: int | None = None, timeout: float = 10.0) -> Frame | None:
        """Frames up to the first of ``kind`` (on ``stream_id`` if given); None if the connection ends."""
        while (got := self.read(timeout)) is not None:
            if got.kind == kind and stream_id in (None, got.stream_id):
                return got
        return None

    def status(self, stream_id: int) -> dict[str, str]:
        """The headers of the frame that ends ``stream_id`` (its trailers)."""
        while (got := self.read()) is not None:
            if got.kind == HEADERS and got.stream_id == stream_id and got.flags & END_STREAM:
                return got.headers
        raise AssertionError(f"the connection closed before stream {stream_id} ended")

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection (frames before that are read and dropped)."""
        try:
            while self.read(timeout) is not None:
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def count_huffman_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every string ``hpack_codec`` Huffman-decodes from now on (still decoded)."""
    decoded: list[int] = []
    real = hpack_codec.huffman_decode

    def counted(raw: bytes) -> bytes:
        decoded.append(len(raw))
        return real(raw)

    monkeypatch.setattr(hpack_codec, "huffman_decode", counted)
    return decoded
