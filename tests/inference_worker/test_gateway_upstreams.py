"""The gateway's upstream clients when a replica goes away as a connection to it opens.

A replica killed while the gateway connects to it can accept the connection and close it before
the pool has sent anything on it. The request never reached the replica, so it must be answered
at once as retryable (the caller tries another replica), not left to its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from inference_worker.gateway import grpc_upstream
from inference_worker.gateway.proxy import PoolLimits, ReplicaPool, UpstreamError, UpstreamResponse


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def closing_as_it_opens(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection the loop opens is closed by the time its opener resumes (a replica going away)."""
    real = loop.create_connection

    async def create_connection(factory: Callable[[], Any], host: str, port: int) -> tuple[Any, Any]:
        transport, protocol = await real(factory, host, port)
        transport.abort()
        await asyncio.sleep(0)  # the protocol's connection_lost runs before the opener sees it
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", create_connection)


async def listening(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.AbstractServer, int]:
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_an_http_request_whose_connection_closes_as_it_opens_is_answered_retryable_at_once(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> UpstreamResponse | UpstreamError:
        server, port = await listening(loop)
        closing_as_it_opens(loop, monkeypatch)
        pool = ReplicaPool("127.0.0.1", port, PoolLimits(), 30.0, loop)
        answer: asyncio.Future[UpstreamResponse | UpstreamError] = loop.create_future()
        head = b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 2\r\n"
        pool.request(head, b"{}", answer.set_result, loop.time() + 30.0)
        try:
            # the pool's sweep (which would answer 504 at the 30 s deadline) is not running here
            result = await asyncio.wait_for(answer, 5.0)
        finally:
            server.close()
        assert pool.empty, "the pool still counts the request"
        assert pool.load(loop.time()) >= 1e6, "a replica that closed as it opened is chosen last for a while"
        return result

    result = loop.run_until_complete(scenario())
    assert isinstance(result, UpstreamError)
    assert result.retryable
    assert "closed the connection" in result.message


def test_a_grpc_call_whose_connection_closes_as_it_opens_is_unavailable_at_once(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        server, port = await listening(loop)
        closing_as_it_opens(loop, monkeypatch)
        upstreams = grpc_upstream.Upstreams(max_message=1 << 20)
        try:
            call = upstreams.call(
                f"127.0.0.1:{port}", b"/inference.GRPCInferenceService/ModelReady", b"", (), 30.0
            )
            with pytest.raises(grpc_upstream.UpstreamError) as raised:
                await asyncio.wait_for(call, 5.0)  # not the call's 30 s deadline
            assert raised.value.status == grpc.StatusCode.UNAVAILABLE  # retried on another replica
        finally:
            upstreams.close()
            server.close()

    loop.run_until_complete(scenario())


def test_the_replica_hears_the_clients_deadline_and_not_the_gateways_own_which_still_cancels_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A replica told a deadline arms a timer per call: the gateway's own timeout (no shorter client
    deadline) stays the gateway's, enforced by resetting the stream, which cancels the replica's work."""
    from inference_worker.grpc_call import UNARY, Call
    from inference_worker.grpc_server import RpcServer

    heard: list[float | None] = []
    cancelled = asyncio.Event()

    async def remaining(request: bytes, context: Call) -> bytes:
        heard.append(context.time_remaining())
        if request == b"slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return b"ok"

    async def scenario() -> None:
        replica = RpcServer(max_header_bytes=1 << 16, max_message=1 << 20)
        replica.add("/test.Deadline/Remaining", UNARY, None, remaining)
        target = f"127.0.0.1:{await replica.start('127.0.0.1', 0)}"
        upstreams = grpc_upstream.Upstreams(1 << 20, forward_below_s=2.0)  # the gateway's own timeout
        path = b"/test.Deadline/Remaining"
        try:
            assert await upstreams.call(target, path, b"", (), 2.0) == b"ok"  # no client deadline
            assert await upstreams.call(target, path, b"", (), 1.5) == b"ok"  # the client's, shorter
            with pytest.raises(grpc_upstream.UpstreamError) as raised:
                await upstreams.call(target, path, b"slow", (), 2.0)
            assert raised.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(cancelled.wait(), 5.0)  # the reset reached the replica's call
        finally:
            upstreams.close()
            await replica.stop(0.1)

    loop.run_until_complete(scenario())
    assert heard[0] is None  # the gateway's own timeout, not told
    assert heard[2] is None
    assert heard[1] is not None
    assert 1.0 < heard[1] <= 1.5


def test_calls_on_one_connection_end_at_their_own_deadlines_in_any_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """One timer per connection serves every call's deadline: a shorter one started later, or one
    started after the timer has fired, still ends on time."""
    from inference_worker.grpc_call import UNARY, Call
    from inference_worker.grpc_server import RpcServer

    async def never(request: bytes, context: Call) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def ended_after(upstreams: grpc_upstream.Upstreams, target: str, timeout: float) -> float:
        started = loop.time()
        with pytest.raises(grpc_upstream.UpstreamError) as raised:
            await upstreams.call(target, b"/test.Deadline/Never", b"", (), timeout)
        assert raised.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
        return loop.time() - started

    async def scenario() -> tuple[list[float], float]:
        replica = RpcServer(max_header_bytes=1 << 16, max_message=1 << 20)
        replica.add("/test.Deadline/Never", UNARY, None, never)
        target = f"127.0.0.1:{await replica.start('127.0.0.1', 0)}"
        upstreams = grpc_upstream.Upstreams(1 << 20, forward_below_s=0.0)  # the replica is told none
        try:
            first = await ended_after(upstreams, target, 0.2)  # opens the connection
            timeouts = (1.5, 0.3, 0.9, 0.6)
            together = await asyncio.gather(*(ended_after(upstreams, target, t) for t in timeouts))
            return [first, *together], await ended_after(upstreams, target, 0.2)  # after the timer fired
        finally:
            upstreams.close()
            await replica.stop(0.1)

    ended, last = loop.run_until_complete(scenario())
    for took, timeout in zip([*ended, last], (0.2, 1.5, 0.3, 0.9, 0.6, 0.2), strict=True):
        assert timeout - 0.01 <= took < timeout + 0.25, (took, timeout)


def test_a_call_started_by_an_expired_calls_outcome_keeps_its_own_deadline(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A call's outcome may start another call (a stream's next request) while the timer is ending
    calls: the new call's deadline is not lost behind a later one's."""
    from inference_worker.grpc_call import UNARY, Call
    from inference_worker.grpc_server import RpcServer

    async def answer(request: bytes, context: Call) -> bytes:
        if request == b"never":
            await asyncio.sleep(30)
        return b"ok"

    async def scenario() -> float:
        replica = RpcServer(max_header_bytes=1 << 16, max_message=1 << 20)
        replica.add("/test.Deadline/Answer", UNARY, None, answer)
        target = f"127.0.0.1:{await replica.start('127.0.0.1', 0)}"
        upstreams = grpc_upstream.Upstreams(1 << 20, forward_below_s=0.0)  # the replica is told none
        path = b"/test.Deadline/Answer"
        ended: asyncio.Future[float] = loop.create_future()
        try:
            assert await upstreams.call(target, path, b"", (), 5.0) == b"ok"  # the connection is open
            late = asyncio.ensure_future(upstreams.call(target, path, b"never", (), 3.0))
            await asyncio.sleep(0.05)

            def then(outcome: bytes | grpc_upstream.UpstreamError) -> None:
                started = loop.time()
                upstreams.send(
                    target, path, b"never", (), 0.3, lambda _: ended.set_result(loop.time() - started)
                )

            assert upstreams.send(target, path, b"never", (), 0.2, then) is not None
            took = await asyncio.wait_for(ended, 5.0)
            late.cancel()
            return took
        finally:
            upstreams.close()
            await replica.stop(0.1)

    took = loop.run_until_complete(scenario())
    assert 0.29 <= took < 0.6, took  # not at the 3 s call's deadline


def test_calls_with_deadlines_a_millisecond_apart_end_together_not_one_walk_each(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each firing of the deadline timer walks the connection's streams: deadlines 1 ms apart must
    not make it fire once per call."""
    from inference_worker.grpc_call import UNARY, Call
    from inference_worker.grpc_server import RpcServer

    fired = 0
    walk = grpc_upstream.UpstreamConnection._expire_due

    def counted(self: grpc_upstream.UpstreamConnection, now: float) -> float:
        nonlocal fired
        fired += 1
        return walk(self, now)

    monkeypatch.setattr(grpc_upstream.UpstreamConnection, "_expire_due", counted)

    async def never(request: bytes, context: Call) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def scenario() -> list[BaseException | bytes]:
        replica = RpcServer(max_header_bytes=1 << 16, max_message=1 << 20)
        replica.add("/test.Deadline/Never", UNARY, None, never)
        target = f"127.0.0.1:{await replica.start('127.0.0.1', 0)}"
        upstreams = grpc_upstream.Upstreams(1 << 20, forward_below_s=0.0)  # the replica is told none
        path = b"/test.Deadline/Never"
        try:
            with contextlib.suppress(grpc_upstream.UpstreamError):  # opens the connection
                await upstreams.call(target, path, b"", (), 0.05)
            calls = [upstreams.call(target, path, b"", (), 0.3 + i / 1000) for i in range(100)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            upstreams.close()
            await replica.stop(0.1)

    outcomes = loop.run_until_complete(scenario())
    assert all(isinstance(o, grpc_upstream.UpstreamError) for o in outcomes)
    assert fired <= 2 + 100 // 5 + 5, fired  # at most one firing per DEADLINE_GRANULE_S, not 100
