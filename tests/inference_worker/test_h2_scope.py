"""``h2_send.ReadScope``: what one connection's read makes another write goes out when the read ends.

The gateway relays between its clients' connections and its replicas': a call started while a
client's read is parsed must reach the replica when that read is done, not after every other
socket's read of the loop iteration (the replica would sit idle meanwhile). Real sockets on a
real loop: the test reads the replica's side of the socket without the loop, so it sees what
was written by the time a callback queued during the read runs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from inference_worker import h2_base
from inference_worker.gateway.grpc_upstream import UpstreamConnection
from inference_worker.h2_send import ReadScope, Sender, Stream
from tests.support.h2_client import (
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    SETTINGS,
    frame,
    request_headers,
)

CALL = b"/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Client(h2_base.Connection):
    """A client-facing connection whose every request starts two calls to the replica."""

    def __init__(
        self, upstream: UpstreamConnection, replica: socket.socket, scope: ReadScope | None, seen: list[bytes]
    ) -> None:
        super().__init__(set(), max_header_bytes=64 * 1024)
        self.upstream = upstream
        self.replica = replica
        self.scope = scope
        self.seen = seen

    def on_headers(self, stream: Stream, headers: tuple[tuple[bytes, bytes], ...], end: bool) -> None:
        asyncio.get_running_loop().call_soon(self._look)  # queued before the calls' flush, if any
        for _ in range(2):  # two streams in flight: the second waits for a flush
            self.upstream.start(CALL, b"request", b"", 5.0, lambda outcome: None)

    def _look(self) -> None:
        """What the replica's socket holds now, read without the loop."""
        try:
            self.seen.append(self.replica.recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            self.seen.append(b"")

    def on_data(self, stream: Stream, data: bytes) -> None:
        pass

    def on_end(self, stream: Stream) -> None:
        pass

    def on_reset(self, stream: Stream) -> None:
        pass


def relay(loop: asyncio.AbstractEventLoop, scope: ReadScope | None) -> bytes:
    """What the replica has received of the two calls by the time the loop runs its next callbacks."""
    replica_listener = socket.create_server(("127.0.0.1", 0))
    front_listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    async def scenario() -> None:
        replica_port = replica_listener.getsockname()[1]
        _, upstream = await loop.create_connection(
            lambda: UpstreamConnection(b"replica", 1 << 20, scope), "127.0.0.1", replica_port
        )
        replica, _ = replica_listener.accept()
        await asyncio.sleep(0.05)
        replica.recv(65536)  # the preface and settings
        user = socket.create_connection(front_listener.getsockname())
        accepted, _ = front_listener.accept()
        transport, _ = await loop.connect_accepted_socket(
            lambda: Client(upstream, replica, scope, seen), accepted
        )
        user.sendall(
            PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, request_headers())
        )
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        transport.close()
        upstream.close()
        for sock in (user, replica):
            sock.close()

    try:
        loop.run_until_complete(scenario())
    finally:
        replica_listener.close()
        front_listener.close()
    assert seen, "the request never reached the client-facing connection"
    return seen[0]


def test_calls_started_during_a_client_s_read_reach_the_replica_when_the_read_ends(
    loop: asyncio.AbstractEventLoop,
) -> None:
    received = relay(loop, ReadScope())
    assert received.count(CALL) == 2  # both calls' header blocks, before any other callback ran


def test_without_a_scope_the_second_call_waits_for_the_end_of_the_loop_iteration(
    loop: asyncio.AbstractEventLoop,
) -> None:
    received = relay(loop, None)
    assert received.count(CALL) == 1  # the first went out at once (one stream); the second later


def test_a_scope_s_read_in_progress_is_not_ended_by_a_nested_one() -> None:
    scope = ReadScope()
    assert scope.begin()
    assert not scope.begin()  # nested: the outer read flushes
    scope.end()
    assert not scope.reading
    assert scope.begin()


class Flushing(Sender):
    """A sender that counts its flushes; a broken one raises."""

    def __init__(self, broken: bool) -> None:
        super().__init__()
        self.broken = broken
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        if self.broken:
            raise OSError("the transport broke")


def test_a_connection_that_fails_to_write_does_not_keep_the_others_of_the_scope_unwritten() -> None:
    scope = ReadScope()
    broken, healthy = Flushing(broken=True), Flushing(broken=False)
    assert scope.begin()
    scope.pending += [broken, healthy]
    scope.end()
    assert (broken.flushes, healthy.flushes) == (1, 1)
    assert not scope.pending
