"""The HTTP/2 core's limits against hostile peers: header blocks, the memory a connection keeps, timeouts.

A gRPC server of a few test routes (``grpc_server.RpcServer``, the worker's and the gateway's) runs on
its own loop in a thread of the test process, so the tests can count what it decodes and the memory it
keeps (``tracemalloc``), and shorten its timeouts (``Timeouts``) instead of waiting 75 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from inference_worker import h2_send, hpack_codec
from inference_worker.gateway.grpc_upstream import UpstreamError, Upstreams
from inference_worker.grpc_call import BIDI, UNARY, Call
from inference_worker.grpc_server import RpcServer, Timeouts
from inference_worker.h2_send import CANCEL, ENHANCE_YOUR_CALM, NO_ERROR
from inference_worker.hpack_codec import _encode_integer, literal
from tests.support.h2_client import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    WINDOW_UPDATE,
    H2Client,
    count_huffman_decodes,
    frame,
    grpc_message,
    request_headers,
)

LIMIT = 64 * 1024
UNARY_PATH, STREAM_PATH, BIG_PATH = "/test.Echo/Unary", "/test.Echo/Stream", "/test.Echo/Big"
CONTINUATION = 9
SHORT = Timeouts(handshake_s=0.3, idle_s=0.6, read_s=0.4, stream_idle_s=1.2, sweep_s=0.05)


async def unary(request: bytes, context: Call) -> bytes:
    """Answers with the call's ``x-tag`` metadata."""
    return dict(context.invocation_metadata()).get("x-tag", "").encode()  # type: ignore[union-attr]


async def stream(requests: AsyncIterator[bytes], context: Call) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def big(request: bytes, context: Call) -> bytes:
    """Answers with initial metadata past the limit."""
    await context.send_initial_metadata((("x-big", "a" * (LIMIT + 100)),))
    return b"ok"


class Served:
    """A server on its own loop's thread."""

    def __init__(self, timeouts: Timeouts | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = RpcServer(max_header_bytes=LIMIT, max_message=1 << 20, timeouts=timeouts)
        self.server.add(UNARY_PATH, UNARY, None, unary)
        self.server.add(STREAM_PATH, BIDI, None, stream)
        self.server.add(BIG_PATH, UNARY, None, big)
        self.thread.start()
        self.port = self.run(self.server.start("127.0.0.1", 0))

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self.run(self.server.stop(0.1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection ended with GOAWAY closes 0.2 s after it, not 2 s."""
    monkeypatch.setattr(h2_send, "LINGER_S", 0.2)


@contextlib.contextmanager
def serving(timeouts: Timeouts | None = None) -> Iterator[Served]:
    served = Served(timeouts)
    try:
        yield served
    finally:
        served.close()


def headers_frames(stream_id: int, block: bytes, flags: int = END_STREAM) -> bytes:
    """``block`` as HEADERS and CONTINUATION frames of 16 KiB."""
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames = [frame(HEADERS, flags | (END_HEADERS if len(chunks) == 1 else 0), stream_id, chunks[0])]
    for i, chunk in enumerate(chunks[1:], 2):
        frames.append(frame(CONTINUATION, END_HEADERS if i == len(chunks) else 0, stream_id, chunk))
    return b"".join(frames)


def call(client: H2Client, stream_id: int, block: bytes, message: bytes = b"") -> None:
    client.send(
        headers_frames(stream_id, block, 0), frame(DATA, END_STREAM, stream_id, grpc_message(message))
    )


def answer(client: H2Client, stream_id: int) -> tuple[bytes, dict[str, str]]:
    """The message and trailers of ``stream_id``."""
    message = b""
    while (got := client.read()) is not None:
        if got.stream_id == stream_id and got.kind == DATA:
            message += got.payload[5:]
        if got.stream_id == stream_id and got.kind == HEADERS and got.flags & END_STREAM:
            return message, got.headers
    raise AssertionError(f"the connection closed before stream {stream_id} ended")


def goaway(client: H2Client) -> tuple[int, int]:
    """The last stream and error code of the GOAWAY the server sends."""
    got = client.until(GOAWAY)
    assert got is not None, "the connection closed without GOAWAY"
    last, code = struct.unpack(">II", got.payload[:8])
    return last, code


def incremental(name: bytes, value: bytes) -> bytes:
    """A literal field with incremental indexing: it enters the dynamic table."""
    return b"\x40" + _encode_integer(len(name), 0x7F, 0) + name + _encode_integer(len(value), 0x7F, 0) + value


def longest_codes(count: int) -> bytes:
    """``count`` symbols of the longest Huffman code (30 bits), as a Huffman-coded string."""
    code = next(bits for bits, symbol in hpack_codec._huffman_codes().items() if symbol == 10)
    bits = code * count
    bits += "1" * (-len(bits) % 8)
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return _encode_integer(len(raw), 0x7F, 0x80) + raw


# -- header blocks ---------------------------------------------------------------------------


def test_metadata_past_the_limit_is_refused_and_the_header_table_stays_in_step() -> None:
    with serving() as served, contextlib.closing(H2Client(served.port)) as client:
        block = (
            request_headers(UNARY_PATH)
            + literal(b"x-big", b"a" * (70 * 1024))
            + incremental(b"x-tag", b"kept")
        )
        call(client, 1, block)
        _, trailers = answer(client, 1)
        assert trailers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        call(client, 3, request_headers(UNARY_PATH) + b"\xbe")  # the entry the refused block added
        assert answer(client, 3) == (b"kept", {"grpc-status": "0"})


def test_a_reference_bomb_ends_the_connection_with_enhance_your_calm() -> None:
    """The audit's block of one-byte references to a 4 KB entry: 4 KB of fields per byte sent."""
    with serving() as served, contextlib.closing(H2Client(served.port)) as client:
        call(client, 1, request_headers(UNARY_PATH) + incremental(b"x-tag", b"v" * 4000))
        assert answer(client, 1)[1]["grpc-status"] == "0"
        client.send(headers_frames(3, request_headers(UNARY_PATH) + b"\xbe" * 60_000))
        assert goaway(client) == (1, ENHANCE_YOUR_CALM)  # stream 3 never ran
        assert client.closed()


def test_a_block_longer_than_the_limit_allows_is_refused_without_decoding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The audit's 250 KiB of 30-bit Huffman codes cost the loop 0.2 s each, to be refused after."""
    decoded = count_huffman_decodes(monkeypatch)
    with serving() as served, contextlib.closing(H2Client(served.port)) as client:
        block = request_headers(UNARY_PATH) + b"\x00\x05x-pad" + longest_codes(18_000)  # 66 KiB
        call(client, 1, block)
        assert answer(client, 1)[1]["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert decoded == []
        call(client, 3, request_headers(UNARY_PATH, x_tag="next"))
        assert answer(client, 3) == (b"next", {"grpc-status": "0"})


def test_a_block_past_twice_the_limit_ends_the_connection_as_it_arrives() -> None:
    with serving() as served, contextlib.closing(H2Client(served.port)) as client:
        client.send(headers_frames(1, request_headers(UNARY_PATH) + literal(b"x-big", b"a" * (2 * LIMIT))))
        assert goaway(client) == (0, ENHANCE_YOUR_CALM)


def test_refused_and_large_blocks_leave_no_memory_behind_on_the_connection() -> None:
    """The audit's 512 distinct refused 250 KiB blocks held ~296 MiB for the connection's life."""
    with serving() as served, contextlib.closing(H2Client(served.port)) as client:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(60):
                refused = request_headers(UNARY_PATH) + literal(b"x-pad", b"%06d" % i + b"a" * 100_000)
                unknown = request_headers("/test.Echo/Nope") + literal(b"x-pad", b"%06d" % i + b"a" * 60_000)
                client.send(headers_frames(4 * i + 1, refused), headers_frames(4 * i + 3, unknown))
                assert answer(client, 4 * i + 1)[1]["grpc-status"] == "8"
                assert answer(client, 4 * i + 3)[1]["grpc-status"] == "12"  # UNIMPLEMENTED
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < 1 << 20, held


# -- the gateway's calls to replicas ---------------------------------------------------------------


def test_a_replica_answer_with_metadata_past_the_limit_fails_the_call_as_internal() -> None:
    with serving() as served:

        async def scenario() -> UpstreamError:
            upstreams = Upstreams(1 << 20)
            try:
                with pytest.raises(UpstreamError) as caught:
                    await upstreams.call(f"127.0.0.1:{served.port}", BIG_PATH.encode(), b"", (), 5.0)
                assert (
                    await upstreams.call(f"127.0.0.1:{served.port}", UNARY_PATH.encode(), b"", (), 5.0) == b""
                )
                return caught.value
            finally:
                upstreams.close()

        error = served.run(scenario())
    assert error.status == grpc.StatusCode.INTERNAL
    assert f"metadata over {LIMIT} bytes" in error.details


def test_large_metadata_passed_on_to_replicas_is_not_kept() -> None:
    with serving() as served:

        async def scenario() -> int:
            upstreams = Upstreams(1 << 20)
            target, path = f"127.0.0.1:{served.port}", UNARY_PATH.encode()
            await upstreams.call(target, path, b"", (), 5.0)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(60):
                metadata = (("x-tag", f"{i:06d}" + "a" * 30_000),)
                assert (await upstreams.call(target, path, b"", metadata, 5.0))[:6] == b"%06d" % i
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            upstreams.close()
            return held

        tracemalloc.start()
        try:
            held = served.run(scenario())
        finally:
            tracemalloc.stop()
    assert held < 1 << 20, held


# -- timeouts ----------------------------------------------------------------------------------


def test_a_connection_that_never_completes_its_handshake_is_closed() -> None:
    """The audit's 4096 silent connections locked every gRPC client out, for good."""
    with serving(SHORT) as served:
        silent = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        preface_only = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        preface_only.sendall(PREFACE)
        assert silent.recv(100) == b""
        received = b""
        while chunk := preface_only.recv(4096):  # our SETTINGS, then the close
            received += chunk
        assert received[3] == 4  # SETTINGS
        silent.close()
        preface_only.close()


def test_an_idle_connection_gets_goaway_even_while_the_client_pings() -> None:
    with serving(SHORT) as served, contextlib.closing(H2Client(served.port)) as client:
        call(client, 1, request_headers(UNARY_PATH, x_tag="a"))
        assert answer(client, 1) == (b"a", {"grpc-status": "0"})
        got = None
        for ping in range(100):  # 0.1 s apart, far more often than the idle time
            client.send(frame(PING, 0, 0, b"%08d" % ping))
            while (got := client.read()) is not None and got.kind not in (PING, GOAWAY):
                pass
            if got is None or got.kind == GOAWAY:
                break
            time.sleep(0.1)
        assert got is not None, "the connection closed without GOAWAY"
        assert got.kind == GOAWAY, "still open after 10 s of pings"
        assert struct.unpack(">II", got.payload[:8]) == (1, NO_ERROR)
        assert client.closed()


def test_a_call_whose_request_stops_arriving_is_cancelled_before_a_quiet_client_stream() -> None:
    with serving(SHORT) as served, contextlib.closing(H2Client(served.port)) as client:
        client.send(
            frame(HEADERS, END_HEADERS, 1, request_headers(UNARY_PATH)), frame(DATA, 0, 1, b"\x00\x00")
        )
        client.send(frame(HEADERS, END_HEADERS, 3, request_headers(STREAM_PATH)))
        resets: list[tuple[int, int]] = []
        while len(resets) < 2:
            got = client.until(RST_STREAM)
            assert got is not None, "the connection closed before the calls were cancelled"
            resets.append((got.stream_id, int.from_bytes(got.payload, "big")))
        assert resets == [(1, CANCEL), (3, CANCEL)]  # the unary call first (read_s), then the stream
        assert goaway(client) == (3, NO_ERROR)  # then the connection, idle


def test_a_client_that_takes_none_of_its_answers_is_dropped_and_a_slow_one_is_not() -> None:
    """A client that never opens its flow-control window kept its connection and the answers
    queued for it for good (a close, even the idle GOAWAY's, waits for them): after ``idle_s``
    with nothing taken, it is aborted; one that opens its window later gets its answer."""
    no_window = {4: 0}  # SETTINGS_INITIAL_WINDOW_SIZE: the server may send no DATA until we grant it
    with serving(SHORT) as served:
        slow = H2Client(served.port, settings=no_window)
        stuck = H2Client(served.port, settings=no_window)
        for client, tag in ((slow, "slow"), (stuck, "stuck")):
            call(client, 1, request_headers(UNARY_PATH, x_tag=tag))
            assert client.until(HEADERS, 1) is not None  # the answer's headers; its DATA waits
        time.sleep(SHORT.idle_s / 2)
        slow.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1024)))
        assert answer(slow, 1) == (b"slow", {"grpc-status": "0"})
        port = stuck.sock.getsockname()[1]
        for ping in range(100):  # PINGs are not reading: the connection is still dropped
            with contextlib.suppress(OSError):
                stuck.send(frame(PING, 0, 0, b"%08d" % ping))
            if port not in served.run(client_ports(served)):
                break
            time.sleep(0.05)
        assert port not in served.run(client_ports(served)), "the client that takes nothing is still served"
        assert stuck.closed()
        slow.close()
        stuck.close()


async def client_ports(served: Served) -> set[int]:
    return {c.transport.get_extra_info("peername")[1] for c in served.server.connections}


def test_calls_on_one_connection_end_at_their_own_deadlines() -> None:
    """One deadline timer per connection: calls given deadlines in any order each end at theirs."""
    with serving() as served, contextlib.closing(H2Client(served.port)) as client:
        timeouts = {1: 0.9, 3: 0.3, 5: 0.6, 7: 1.5}
        started = time.monotonic()
        for stream_id, seconds in timeouts.items():  # client streams left open: only the deadline ends them
            block = request_headers(STREAM_PATH, grpc_timeout=f"{round(seconds * 1000)}m")
            client.send(frame(HEADERS, END_HEADERS, stream_id, block))
        ended: dict[int, float] = {}
        while len(ended) < len(timeouts):
            got = client.read()
            assert got is not None, "the connection closed before every call ended"
            if got.kind == HEADERS and got.flags & END_STREAM:
                assert got.headers["grpc-status"] == "4", got.headers  # DEADLINE_EXCEEDED
                ended[got.stream_id] = time.monotonic() - started
    for stream_id, seconds in timeouts.items():
        assert seconds - 0.01 <= ended[stream_id] < seconds + 0.25, (stream_id, ended[stream_id])
