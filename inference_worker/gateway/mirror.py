"""The gateway's side of shadow traffic: hand copies to the low-priority shadow process.

Measured on a shared 2-core machine (bench/RESULTS.md, "Gateway"): sending a
copy, reading the shadow's answer and comparing the two inside the gateway's
event loop costs the loop more than a proxied request does, and every
microsecond of it delays live requests when the CPU is busy. So the gateway
only frames each copy (references to bytes it already holds, one small JSON
header) and writes it to a child process running at the lowest CPU priority
(``gateway.shadow_child``), flushing once per loop iteration, after the
client's answer is written. The child sends, compares and reports counters
back; the gateway merges them into its metrics and stats.

The queue is bounded: at most ``queue_size + concurrency`` copies are handed
over and not yet reported finished; beyond that (or while the child is not
running) a copy is dropped and counted. A child that dies is restarted after a
second; the copies it held are lost (and logged).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from typing import Any

from inference_worker.gateway.metrics import GatewayMetrics, apply_shadow_state
from inference_worker.gateway.shadow import FrameReader, ShadowCopy, encode_copy

log = logging.getLogger("inference_worker.gateway")
RESTART_S = 1.0


class ShadowMirror(asyncio.Protocol):
    """Offers copies to the shadow process and reads its reports."""

    def __init__(
        self,
        *,
        queue_size: int,
        concurrency: int,
        metrics: GatewayMetrics,
        child_args: list[str],
    ) -> None:
        self.capacity = queue_size + concurrency
        self.concurrency = concurrency
        self.metrics = metrics
        self.child_args = child_args
        self.handed = 0
        """Copies written to the current child."""
        self.finished = 0
        """Copies the current child reported finished."""
        self.transport: Any = None
        self.process: subprocess.Popen[bytes] | None = None
        self._outbox: list[bytes] = []
        self._stopping = False
        self._reader = FrameReader()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start the shadow process and connect to it."""
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            command = [
                sys.executable,
                "-m",
                "inference_worker.gateway.shadow_child",
                "--fd",
                str(theirs.fileno()),
            ]
            command += ["--concurrency", str(self.concurrency), *self.child_args]
            self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self.handed = self.finished = 0
        self._reader = FrameReader()
        await self._loop.connect_accepted_socket(lambda: self, ours)

    def offer(self, copy: ShadowCopy) -> None:
        """Hand a copy over at the end of this loop iteration, or count it dropped; never waits."""
        if self.transport is None or self.handed - self.finished >= self.capacity:
            self.metrics.series(copy.deployment, copy.variant, copy.version).shadow_dropped += 1
            return
        self.handed += 1
        if not self._outbox and self._loop is not None:
            self._loop.call_soon(self._flush)
        self._outbox.append(encode_copy(copy))

    def _flush(self) -> None:
        if self.transport is not None and self._outbox:
            self.transport.write(b"".join(self._outbox))
        self._outbox.clear()

    # -- asyncio.Protocol: the socket to the child -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for header, _ in self._reader.feed(data):
            self.finished = int(header["done"])
            for deployment, variant, version, state in header["series"]:
                apply_shadow_state(self.metrics.series(deployment, variant, version), state)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._outbox.clear()
        if self._stopping or self._loop is None:
            return
        code = self.process.poll() if self.process is not None else None
        log.error(
            "the shadow process exited (%s) with %d copies; restarting", code, self.handed - self.finished
        )
        self._loop.call_later(RESTART_S, self._restart)

    def _restart(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # its socket closed but it lives on: it is of no use
            self.process.wait()
        if not self._stopping and self._loop is not None:
            task = self._loop.create_task(self.start())
            task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Close the socket (the child finishes and exits) and reap the child."""
        self._stopping = True
        if self.transport is not None:
            self._flush()
            self.transport.close()
        process = self.process
        if process is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, process.wait), 5.0)
            except TimeoutError:
                process.kill()
                await loop.run_in_executor(None, process.wait)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cannot restart the shadow process: %s", task.exception())
