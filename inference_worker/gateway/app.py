"""The gateway: one stable address in front of every deployment's replicas.

Each inference request (``POST /v2/models/{deployment}[/versions/{v}]/infer``, ``POST
/v1/models/{deployment}:predict``) and metadata read (``GET /v2/models/{deployment}[/ready]``):
look the deployment up in the routing table, ``choose_arm`` (by weight, sticky with the
routing-key header), ``choose_replica`` (least outstanding), proxy the bytes unchanged (the
path's model name rewritten when the variant's differs). A connection failure or a 503 (the
worker refuses before running anything) is retried on another replica of the arm, each at most
once. A variant at zero replicas has its requests held by the ``Activator`` until one is ready.
Answers carry ``X-Kiln-Variant``/``X-Kiln-Model-Version``; ``ShadowMirror`` may copy them to shadows.
gRPC is routed alike by ``grpc_proxy.GrpcProxy``. No body decoded, no task per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from random import Random

from inference_worker.contracts.gateway_stats import GatewaySnapshot
from inference_worker.contracts.gateway_table import GatewayTableRecord
from inference_worker.gateway import identity, shared_memory
from inference_worker.gateway.activator import ActivationSender, Activator
from inference_worker.gateway.call import Call
from inference_worker.gateway.config import GatewayConfig
from inference_worker.gateway.grpc_proxy import GrpcProxy
from inference_worker.gateway.metrics import GatewayMetrics, Series
from inference_worker.gateway.mirror import ShadowMirror
from inference_worker.gateway.proxy import PoolLimits, UpstreamResponse, Upstreams
from inference_worker.gateway.routing import (
    EMPTY,
    INFER,
    READ,
    Replica,
    Route,
    RoutingTable,
    Target,
    Variant,
    choose_arm,
    parse_target,
    wants_shadow,
)
from inference_worker.gateway.server import (
    GatewayRequest,
    GatewayResponse,
    GatewayServer,
    Reply,
    json_response,
)
from inference_worker.gateway.shadow import ShadowCopy
from inference_worker.gateway.stats import StatsPublisher, TableWatcher, redis_client

log = logging.getLogger("inference_worker.gateway")

METRICS_TYPE = b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
_SWEEP_S = 0.25


class Gateway:
    """Routing table, upstream pools, metrics and the servers of one gateway process."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.port = 0
        self.grpc_port = -1
        self.table: RoutingTable = EMPTY
        self.loaded = False
        self.routes: dict[bytes, Route] = {}
        self.rng = Random()  # noqa: S311 - traffic splitting, not secrets
        self.metrics = GatewayMetrics()
        self.started_at = time.time()
        self.server = GatewayServer(
            self, max_body_bytes=config.max_body_bytes, routing_key_header=config.routing_key_header
        )
        self._registry = self.metrics.registry()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.upstreams: Upstreams | None = None
        self._shadow: ShadowMirror | None = None
        self.grpc: GrpcProxy | None = None
        self._targets: dict[bytes, Target] = {}
        self._series_by_replica: dict[int, Series] = {}
        self.activator = Activator(
            queue_size=config.activator_queue_size, timeout_s=config.activator_timeout_s, notify=_nobody
        )
        self.metrics.held = self.activator.held

    # -- lifecycle ---------------------------------------------------------------------------
    async def serve(self, *, handle_signals: bool = True) -> int:
        """Run until ``stop()``; returns the exit status."""
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
        c = self.config
        limits = PoolLimits(c.max_connections_per_replica, c.connect_timeout_s)
        self.upstreams = Upstreams(limits, c.upstream_timeout_s, loop)
        upstreams = self.upstreams
        self.metrics.outstanding = lambda: {u: float(p.outstanding) for u, p in upstreams.pools.items()}
        child_args = [
            "--upstream-timeout-s", str(c.upstream_timeout_s),
            "--connect-timeout-s", str(c.connect_timeout_s),
            "--max-connections", str(c.max_connections_per_replica),
            "--nice", str(c.shadow_nice),
            "--log-level", c.log_level,
        ]  # fmt: skip
        self._shadow = ShadowMirror(
            queue_size=c.shadow_queue_size, concurrency=c.shadow_concurrency, metrics=self.metrics,
            child_args=child_args,
        )  # fmt: skip
        self.port = await self.server.start(c.host, c.port)
        if c.grpc_port >= 0:
            self.grpc = GrpcProxy(self, c)
            self.grpc_port = await self.grpc.start(c.host, c.grpc_port)
        log.info("listening http=%s:%d grpc=%s:%d", c.host, self.port, c.host, self.grpc_port)
        client = redis_client(c.redis_url)
        self.activator.notify = ActivationSender(client, c.routing_key, c.gateway_id, loop)
        watcher = TableWatcher(client, c.routing_key, c.reload_interval_s, self.apply, self.metrics)
        publisher = StatsPublisher(
            client, c.routing_key, c.gateway_id, c.stats_interval_s, self.snapshot, self.table_record
        )
        await self._shadow.start()
        tasks = [loop.create_task(job) for job in (watcher.run(), publisher.run(), self._sweep())]
        await self._stop.wait()
        await self._drain()
        for task in tasks:
            task.cancel()
        if (await asyncio.wait(tasks, timeout=2.0))[
            1
        ]:  # a task that ignores its cancel must not hang the stop
            log.warning("a background task did not end when cancelled; stopping without it")
        await self._shadow.stop()
        await publisher.publish()
        await client.aclose()
        log.info("stopped")
        return 0

    def stop(self) -> None:
        """Begin the drain; safe to call from any thread."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)

    async def _drain(self) -> None:
        self.server.stop_accepting()
        deadline = time.monotonic() + self.config.drain_timeout_s
        grpc = [asyncio.create_task(self.grpc.stop(self.config.drain_timeout_s))] if self.grpc else []
        while self.server.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.activator.close()
        await self.server.close()
        await asyncio.gather(*grpc)  # it stopped taking calls at once and let those in flight finish
        assert self.upstreams is not None  # noqa: S101 - serve() set it
        self.upstreams.close()

    async def _sweep(self) -> None:
        assert self.upstreams is not None  # noqa: S101 - serve() set it
        while True:
            await asyncio.sleep(_SWEEP_S)
            self.upstreams.sweep()
            self.activator.sweep()

    def apply(self, table: RoutingTable) -> None:
        """Swap in a new table whole; requests in flight keep the route they were given."""
        self.table = table
        self.routes = {name.encode(): route for name, route in table.deployments.items()}
        self.loaded = True
        if self.upstreams is not None:
            urls = {r.url for route in table.deployments.values() for v in route.variants for r in v.replicas}
            self.upstreams.keep_only(urls)
        if self.grpc is not None:
            self.grpc.keep_only(table)
        self._series_by_replica = {
            id(replica): self.metrics.series(route.name, variant.name, replica.version)
            for route in table.deployments.values()
            for variant in route.variants
            for replica in variant.replicas
        }
        self.metrics.table_version = table.version
        self.metrics.table_loaded_at = time.time()
        self.activator.release(self.routes)
        log.info("routing table %d applied: %d deployment(s)", table.version, len(table.deployments))

    def snapshot(self) -> GatewaySnapshot:
        return self.metrics.snapshot(self.config.gateway_id, self.started_at, self.in_flight())

    def in_flight(self) -> dict[tuple[str, str], int]:
        """Requests sent to each variant's replicas and not answered yet, by (deployment, variant)."""
        pools = self.upstreams.pools if self.upstreams is not None else {}
        return {
            (route.name, v.name): sum(pools[r.url].outstanding for r in v.replicas if r.url in pools)
            for route in self.table.deployments.values()
            for v in route.variants
        }

    def table_record(self) -> GatewayTableRecord:  # which table it serves (contracts.gateway_table)
        return GatewayTableRecord(self.config.gateway_id, self.table.version, self.table.digest, time.time())

    # -- requests ----------------------------------------------------------------------------
    def handle(self, request: GatewayRequest, reply: Reply) -> None:
        """Answer ``request`` through ``reply``, now or later; never raises."""
        target = self._targets.get(request.url)
        if target is None:
            target = parse_target(request.url)
            if target is None:
                return self._gateway_route(request, reply)
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()
            self._targets[request.url] = target
        method = request.method
        if target.kind == INFER:
            if method != b"POST":
                return reply(json_response(405, {"error": "method not allowed; use POST"}))
        elif target.kind == READ:
            if method not in (b"GET", b"HEAD"):
                return reply(json_response(405, {"error": "method not allowed; use GET"}))
            method = b"GET"
        else:
            return reply(json_response(404, {"error": f"no route for {request.url.decode('latin-1')!r}"}))
        route = self.routes.get(target.key)
        if route is None:
            if not self.loaded:
                return reply(json_response(503, {"error": "the gateway has no routing table yet"}))
            message = f"unknown deployment {target.key.decode('latin-1')!r}"
            return reply(json_response(404, {"error": message}))
        variant = choose_arm(route, request.routing_key, self.rng)
        if variant is None:
            message = f"deployment {route.name!r} has no variant with traffic weight"
            return reply(json_response(503, {"error": message}))
        return Call(self, request, reply, route, variant, method, target).attempt()

    def _gateway_route(self, request: GatewayRequest, reply: Reply) -> None:
        path = request.url.partition(b"?")[0]
        if path == b"/metrics":
            return reply(GatewayResponse(200, METRICS_TYPE, self.metrics.render(self._registry)))
        if path == b"/v2/health/live":
            return reply(json_response(200, {"live": True}))
        if path == b"/healthz":  # as the platform and the workers answer it: the process is up
            return reply(json_response(200, {"status": "ok", "routing_table_loaded": self.loaded}))
        if path == b"/v2/health/ready":
            body = {"ready": self.loaded, "routing_table_version": self.table.version}
            return reply(json_response(200 if self.loaded else 503, body))
        if path == b"/v2":
            return reply(json_response(200, identity.server_metadata()))
        if shared_memory.is_extension_path(path):
            return reply(json_response(501, {"error": shared_memory.MESSAGE}))
        return reply(json_response(404, {"error": f"no route for {path.decode('latin-1')!r}"}))

    def series(self, route: Route, variant: Variant, replica: Replica | None) -> Series:
        """The counters of an answer by ``replica`` (or by the gateway itself, for ``variant``)."""
        if replica is not None:
            found = self._series_by_replica.get(id(replica))
            if found is not None:
                return found
        version = replica.version if replica is not None else variant.version
        return self.metrics.series(route.name, variant.name, version)

    def http_load(self, url: str) -> float:
        return 0.0 if self.upstreams is None else self.upstreams.load(url)

    def offer_shadow(self, copy: ShadowCopy) -> None:
        assert self._shadow is not None  # noqa: S101 - serve() set it
        self._shadow.offer(copy)

    def mirror(self, call: Call, live: UpstreamResponse, seconds: float) -> None:
        """Offer a copy of a successful live request to each shadow variant that wants one.

        A live arm that is also a shadow (a rollout measuring agreement) gets copies of the
        requests the other arms answered, never of its own.
        """
        assert self._shadow is not None  # noqa: S101 - serve() set it
        for shadow in call.route.shadows:
            if shadow.name != call.variant.name and wants_shadow(shadow, self.rng):
                request = call.request
                replicas = [(r.host, r.port, r.version) for r in shadow.replicas]
                url = call.upstream_url(shadow)
                copy = ShadowCopy(
                    call.route.name, shadow.name, shadow.version, replicas, call.method, url,
                    request.headers, request.body, live, seconds,
                )  # fmt: skip
                self._shadow.offer(copy)


_MAX_TARGETS = 4096
"""Distinct request URLs whose parse is remembered (the cache restarts when full)."""


def _nobody(deployment: str, variant: str, held: int) -> None:
    """Where activation requests go before the gateway has Redis."""
