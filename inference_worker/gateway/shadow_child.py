"""The shadow process: sends the gateway's copies to shadow replicas and compares the answers.

Started by the gateway (``gateway.mirror``) as ``python -m
inference_worker.gateway.shadow_child`` with one end of a Unix socket pair,
it lowers its own CPU priority first (``--nice``, 19 by default): on a busy
machine the live path always wins the CPU, so a client's latency does not
depend on the shadow. It reads copies from the socket, keeps at most
``--concurrency`` of them in flight (the gateway bounds how many it hands
over, so nothing queues here beyond that), sends each to the shadow replica
with the fewest outstanding requests over the same pooled client as the
gateway's, and compares the shadow answer with the live one. A copy of a gRPC
call goes to the shadow replica's gRPC server (one channel per replica).

``REPORT_S`` after a copy finishes (one frame for all that finished by then)
it writes back how many copies it has finished and the cumulative shadow
counters of the (deployment, variant, version) that changed. Idle, it only
wakes once a second to close idle connections. It exits when the gateway
closes its end (or dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from random import Random
from typing import Any

import grpc

from inference_worker.errors import WorkerError
from inference_worker.gateway.metrics import GatewayMetrics, shadow_state
from inference_worker.gateway.proxy import PoolLimits, UpstreamError, UpstreamResponse, Upstreams
from inference_worker.gateway.routing import Replica, choose_replica
from inference_worker.gateway.shadow import (
    GRPC_METHOD,
    FrameReader,
    ShadowCopy,
    compare,
    decode_copy,
    decode_grpc_outputs,
    decode_outputs,
    frame,
)

log = logging.getLogger("inference_worker.gateway.shadow")
REPORT_S = 0.02
SWEEP_S = 0.25
_GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class ShadowRunner(asyncio.Protocol):
    """The socket to the gateway, the copies in flight, and their counters."""

    def __init__(self, upstreams: Upstreams, concurrency: int, done: asyncio.Event) -> None:
        self.upstreams = upstreams
        self.concurrency = concurrency
        self.metrics = GatewayMetrics()
        self.rng = Random()  # noqa: S311 - load balancing, not secrets
        self.waiting: deque[ShadowCopy] = deque()
        self.in_flight = 0
        self.finished = 0
        self.changed: set[tuple[str, str, str]] = set()
        self.transport: Any = None
        self._reader = FrameReader()
        self._replicas: dict[tuple[str, int, str], Replica] = {}
        self._closed = done
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._reporting = False
        self._sweeping = False

    # -- the socket to the gateway -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for header, payload in self._reader.feed(data):
            self.submit(decode_copy(header, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed.set()

    def report(self) -> None:
        """Send what finished and the counters that changed since the last report."""
        self._reporting = False
        if not self.changed or self.transport is None or self.transport.is_closing():
            return
        series = [[*key, shadow_state(self.metrics.series(*key))] for key in self.changed]
        self.changed.clear()
        self.transport.write(frame({"done": self.finished, "series": series}))

    # -- copies ------------------------------------------------------------------------------
    def submit(self, copy: ShadowCopy) -> None:
        if self.in_flight < self.concurrency:
            self._send(copy)
        else:
            self.waiting.append(copy)

    def _send(self, copy: ShadowCopy) -> None:
        replicas = [self._replica(*replica) for replica in copy.replicas]
        replica = choose_replica(replicas, self.upstreams.load, self.rng)
        if replica is None:
            self._finish(copy, copy.version, None, 0.0)
            return
        self.in_flight += 1
        started = time.perf_counter()
        if not self._sweeping:
            self._sweeping = True
            self.upstreams.loop.call_later(SWEEP_S, self._sweep)

        def done(result: UpstreamResponse | UpstreamError) -> None:
            self.in_flight -= 1
            self._finish(copy, replica.version, result, time.perf_counter() - started)
            if self.waiting and self.in_flight < self.concurrency:
                self._send(self.waiting.popleft())

        if copy.method == GRPC_METHOD:
            self.upstreams.loop.create_task(self._send_grpc(copy, replica, done))
            return
        head = b"%s %s HTTP/1.1\r\nContent-Length: %d\r\n%s" % (
            copy.method,
            copy.url,
            len(copy.body),
            copy.headers,
        )
        pool = self.upstreams.pool(replica.url, replica.host, replica.port)
        pool.request(head, copy.body, done, self.upstreams.loop.time() + self.upstreams.timeout_s)

    async def _send_grpc(self, copy: ShadowCopy, replica: Replica, done: Any) -> None:
        target = (
            f"[{replica.host}]:{replica.port}" if ":" in replica.host else f"{replica.host}:{replica.port}"
        )
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(target, options=_GRPC_OPTIONS)
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            answer = await call(copy.body, timeout=self.upstreams.timeout_s)
        except grpc.aio.AioRpcError as exc:
            done(UpstreamError(f"{target}: {exc.code().name} {exc.details()}", retryable=False))
            return
        done(UpstreamResponse(200, b"", answer))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def _sweep(self) -> None:
        """Deadlines of copies in flight and idle connections; re-armed while connections are open."""
        self.upstreams.sweep()
        self._sweeping = bool(self.upstreams.pools)
        if self._sweeping:
            self.upstreams.loop.call_later(SWEEP_S if self.in_flight else 1.0, self._sweep)

    def _replica(self, host: str, port: int, version: str) -> Replica:
        key = (host, port, version)
        found = self._replicas.get(key)
        if found is None:
            found = self._replicas[key] = Replica("", f"http://{host}:{port}", host, port, version, b"")
        return found

    def _finish(
        self, copy: ShadowCopy, version: str, result: UpstreamResponse | UpstreamError | None, seconds: float
    ) -> None:
        self.finished += 1
        key = (copy.deployment, copy.variant, version)
        self.changed.add(key)
        if not self._reporting:
            self._reporting = True
            self.upstreams.loop.call_later(REPORT_S, self.report)
        series = self.metrics.series(*key)
        if result is None or isinstance(result, UpstreamError) or result.status != 200:
            series.shadow_errors += 1
            series.shadow_sent += result is not None
            return
        series.shadow_sent += 1
        series.shadow_latency.observe(seconds)
        series.shadow_live_latency.observe(copy.live_seconds)
        try:
            if copy.method == GRPC_METHOD:
                live, shadow = decode_grpc_outputs(copy.live.body), decode_grpc_outputs(result.body)
            else:
                live, shadow = decode_outputs(copy.live), decode_outputs(result)
            series.compared(*compare(live, shadow))
        except (WorkerError, ValueError, TypeError, KeyError) as exc:
            log.debug("shadow answer of %s/%s not comparable: %s", copy.deployment, copy.variant, exc)
            series.shadow_errors += 1


async def run(sock: socket.socket, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    limits = PoolLimits(max_connections=args.max_connections, connect_timeout_s=args.connect_timeout_s)
    upstreams = Upstreams(limits, args.upstream_timeout_s, loop)
    closed = asyncio.Event()
    runner = ShadowRunner(upstreams, args.concurrency, closed)
    await loop.connect_accepted_socket(lambda: runner, sock)
    await closed.wait()
    upstreams.close()
    await runner.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inference_worker.gateway.shadow_child")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--upstream-timeout-s", type=float, default=30.0)
    parser.add_argument("--connect-timeout-s", type=float, default=2.0)
    parser.add_argument("--max-connections", type=int, default=128)
    parser.add_argument("--nice", type=int, default=19)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the gateway, which closes our socket
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(OSError):
        os.nice(args.nice)
    sock = socket.socket(fileno=args.fd)
    try:
        import uvloop

        uvloop.run(run(sock, args))
    except ImportError:
        asyncio.run(run(sock, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
