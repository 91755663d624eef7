"""One worker process: listen, load, warm up, serve, drain.

Order matters for probes: HTTP (and gRPC) listen first, so liveness answers
at once; readiness turns true only after every instance's session is loaded
and warmed up at batch 1 and at each preferred size. ``stop()`` (SIGTERM)
starts the drain: readiness and gRPC health go false, new inference gets
503/UNAVAILABLE, in-flight requests finish (up to ``--drain-timeout-s``),
then the servers close and ``serve()`` returns 0.

With ``--shutdown-delay-s``, SIGTERM first only announces the stop: readiness
and gRPC health go false and a report saying ``draining`` goes out at once,
but inference is still served for that long (a second signal cuts it short).
An orchestrator that stops workers itself (Swarm on a rolling update, a
scale-down or a drained node) gives the platform that time to take the
worker out of the routing table, so no request meets a closed door.
``--listen-file`` records the ports actually bound, for a health check of a
worker that listens on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Sequence

from inference_worker.batcher import Batcher, Runner
from inference_worker.config import ConfigError, WorkerConfig
from inference_worker.contracts.report import Listen, encode_listen
from inference_worker.dataplane import DataPlane, State
from inference_worker.grpc_server import GrpcServer
from inference_worker.h2_send import ReadScope
from inference_worker.http_api import HttpApi
from inference_worker.http_server import HttpServer
from inference_worker.metrics import WorkerMetrics, gpu_reader
from inference_worker.reporter import Reporter
from inference_worker.runner import InstanceRunner
from inference_worker.runtime import OrtRuntime, read_model
from inference_worker.shm import SharedMemory

log = logging.getLogger("inference_worker")


class Worker:
    """The servers, the dataplane and the model of one worker process."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.http_port = 0
        self.grpc_port = -1
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._reporter: Reporter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher: Batcher | None = None
        self._grpc: GrpcServer | None = None
        self._scope = ReadScope()
        """The gRPC connections': a batch's answers go out as soon as they are made (and a read's)."""
        self._reporter_task: asyncio.Task[None] | None = None
        model = config.model
        self.metrics = WorkerMetrics(model.name, model.version, config.batching.max_batch_size)
        self.dataplane = DataPlane(
            model_name=model.name,
            model_version=model.version,
            batching=config.batching,
            metrics=self.metrics,
            shared_memory=SharedMemory(config.shared_memory, max_input_bytes=config.limits.max_body_bytes),
            class_labels=model.class_labels,
        )
        registry = self.metrics.registry()
        self.http_api = HttpApi(self.dataplane, config.limits, lambda: self.metrics.render(registry))
        self._http = HttpServer(self.http_api, config.limits)
        self.metrics.gauges["queue_depth"] = lambda: self.dataplane.queue_depth
        self.metrics.gauges["in_flight_requests"] = lambda: self.dataplane.in_flight
        self.metrics.gauges["running_batches"] = lambda: self.dataplane.running_batches
        self.metrics.gauges["ready"] = lambda: float(self.dataplane.ready)
        shm = self.dataplane.shared_memory
        self.metrics.gauges["system_shared_memory_regions"] = lambda: shm.region_count
        self.metrics.gauges["system_shared_memory_bytes"] = lambda: shm.registered_bytes

    async def serve(self, *, handle_signals: bool = True) -> int:
        """Run until ``stop()``; returns the process exit status."""
        self._loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self.stop)
        model_bytes = read_model(self.config.model.path, self.config.model.sha256)
        await self._listen()
        try:
            runtimes = await self._loop.run_in_executor(None, self._load, model_bytes)
        except ConfigError as exc:
            log.error("%s", exc)
            self.dataplane.state = State.FAILED
            await self._close()
            return 1
        del model_bytes
        self._attach(runtimes)
        if self._grpc is not None:
            await self._grpc.set_serving(True)
        log.info("ready: model %s version %s", self.config.model.name, self.config.model.version)
        if self.config.report.url is not None:
            self._reporter = Reporter(
                self.config.report,
                self.dataplane,
                device_stats=self.metrics.device_stats,
                listen=Listen(http_port=self.http_port, grpc_port=self.grpc_port),
            )
            self._reporter_task = self._loop.create_task(self._reporter.run())
        await self._stop.wait()
        await self._linger()
        await self._drain()
        return 0

    def stop(self) -> None:
        """Begin the stop (a second call ends ``--shutdown-delay-s`` early); safe from any thread."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: already stopped
            self._loop.call_soon_threadsafe(self._stop_or_hurry)

    def _stop_or_hurry(self) -> None:
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    async def _linger(self) -> None:
        """``--shutdown-delay-s``: say "not ready" and "draining" at once, serve on for the delay."""
        delay = self.config.server.shutdown_delay_s
        if delay <= 0 or not self.dataplane.ready:
            return
        log.info("stopping: serving %.1f s more while balancers take this worker out", delay)
        self.dataplane.leaving = True
        if self._grpc is not None:
            await self._grpc.set_serving(False)
        if self._reporter is not None:
            self._reporter.nudge()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), delay)

    async def _listen(self) -> None:
        server = self.config.server
        self.http_port = await self._http.start(server.host, server.http_port)
        if server.grpc_port >= 0:
            self._grpc = GrpcServer(self.dataplane, self.config.limits, self._scope)
            self.grpc_port = await self._grpc.start(server.host, server.grpc_port)
        log.info("listening http=%s:%d grpc=%s:%d", server.host, self.http_port, server.host, self.grpc_port)
        if server.listen_file:
            self._write_listen_file(server.listen_file)

    def _write_listen_file(self, path: str) -> None:
        """The ports bound, as reports carry them (``contracts.report``), replaced whole (never half read)."""
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "w") as handle:
            json.dump(encode_listen(Listen(http_port=self.http_port, grpc_port=self.grpc_port)), handle)
        os.replace(partial, path)

    def _load(self, model_bytes: bytes) -> list[OrtRuntime]:
        """Build every instance's session and warm it up (in a thread: the loop keeps answering)."""
        model = self.config.model
        runtimes = [OrtRuntime(model_bytes, model) for _ in range(model.instance_count)]
        signature = runtimes[0].signature
        sizes = [1, *self.config.batching.preferred_batch_sizes] if signature.batched else [1]
        for runtime in runtimes:
            try:
                runtime.warm_up(sizes, model.warmup)
            except Exception as exc:  # ORT's own errors: the model cannot run at all
                raise ConfigError(f"--model-path: warm-up failed: {exc}".splitlines()[0]) from None
        log.info(
            "loaded %s: %d instance(s) on %s, batching %s",
            model.path.name,
            len(runtimes),
            ",".join(runtimes[0].providers),
            "on" if signature.batched else "off (no dynamic batch dimension)",
        )
        return runtimes

    def _attach(self, runtimes: Sequence[OrtRuntime]) -> None:
        assert self._loop is not None  # noqa: S101 - serve() set it
        inline_below_s = self.config.model.inline_below_us / 1e6
        runners: list[Runner] = [
            InstanceRunner(runtime.run, self._loop, f"model-instance-{index}", inline_below_s=inline_below_s)
            for index, runtime in enumerate(runtimes)
        ]
        signature = runtimes[0].signature
        self._batcher = Batcher(
            runners,
            self.config.batching,
            batched=signature.batched,
            loop=self._loop,
            max_queue_bytes=self.config.limits.max_queue_bytes,
            observer=self.metrics,
            scope=self._scope,
        )
        self.metrics.device_stats = gpu_reader(runtimes[0].cuda_device)
        self.dataplane.attach(signature, self._batcher)

    async def _drain(self) -> None:
        log.info("draining: finishing %d in-flight request(s)", self.dataplane.in_flight)
        self.dataplane.begin_drain()
        self._http.stop_accepting()
        if self._grpc is not None:
            await self._grpc.drain()
        try:
            await asyncio.wait_for(self.dataplane.drained(), self.config.server.drain_timeout_s)
        except TimeoutError:
            log.warning("drain timed out with %d request(s) in flight", self.dataplane.in_flight)
        await self._close()
        log.info("stopped")

    async def _close(self) -> None:
        if self._reporter_task is not None:
            self._reporter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter_task
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        await self._http.close()
        if self._batcher is not None:
            self._batcher.close()
        self.dataplane.shared_memory.close()
