"""The gateway's gRPC side: ``inference.GRPCInferenceService`` routed like HTTP.

A server on ``--grpc-port`` (our HTTP/2 core) whose routes keep every
message as bytes. For ``ModelInfer``, ``ModelReady`` and ``ModelMetadata`` it
reads the model name the request names (the deployment), chooses an arm with
the same ``choose_arm`` as HTTP (sticky when the call carries the routing-key
metadata, ``x-routing-key`` by default), a replica of that arm that has a gRPC
server by least outstanding requests (HTTP's and gRPC's together), and calls
the replica's own gRPC server with the request's bytes, the model name
rewritten when the variant's workers answer to another one
(``grpc_wire.with_name``). A replica that cannot be reached or answers
``UNAVAILABLE`` (loading, draining) or ``RESOURCE_EXHAUSTED`` (its queue is
full) is retried on another replica of the arm, each at most once, as HTTP's
connection failures and 503s are.

Every answer is labelled like HTTP's (initial metadata ``x-kiln-variant`` and
``x-kiln-model-version``, and response parameters ``kiln_variant`` and ``kiln_model_version``, per
answer of a stream too). The call's deadline, lowered to ``--upstream-timeout-s``, bounds the call;
the client's own deadline, when shorter, goes on to the replica with its other metadata. Answers
count in HTTP's per-(deployment, variant, version) series (with the HTTP status of the gRPC code,
``HTTP_OF``) for the stats, dashboards and rollout guards, and
a successful ``ModelInfer`` may be copied to shadow variants (by their gRPC servers).

``ModelStreamInfer`` routes each request of a stream on its own (a routing key in the stream's
metadata keeps it on one arm), up to ``STREAM_WINDOW`` at once, answering in request order; a failed
request answers with ``error_message`` and the stream goes on. ``ServerLive``, ``ServerReady`` (a
table is loaded) and ``ServerMetadata`` are the gateway's own; other RPCs are ``UNIMPLEMENTED``.

Every forwarded call walks the replicas of its arm in ``grpc_infer.ReplicaCall`` (from callbacks, no
task per call, as HTTP's calls go): a unary ``ModelInfer`` answers its call from there, the other RPCs
and each request of a stream await it.

Calls for a variant at zero wait in the activator (``grpc_hold``). The server is our HTTP/2 core
(``grpc_server.RpcServer``, routes of raw bytes) and the calls to the replicas go out on it as a client
(``grpc_upstream``), both on the gateway's loop: grpc.aio's server and channels, on a thread of their
own, cost the hop about 1.2 ms and 40% of the req/s (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from random import Random
from typing import Any, Protocol

import grpc

from inference_worker import build_protos, pb_wire
from inference_worker.gateway import grpc_hold, grpc_wire, identity, shared_memory
from inference_worker.gateway.activator import Activator
from inference_worker.gateway.config import GatewayConfig
from inference_worker.gateway.grpc_infer import PATH, RETRYABLE, Failure, call_replica, labels_of, model_infer
from inference_worker.gateway.grpc_upstream import UpstreamError, Upstreams
from inference_worker.gateway.metrics import Series
from inference_worker.gateway.proxy import UpstreamResponse
from inference_worker.gateway.routing import (
    Replica,
    Route,
    RoutingTable,
    Variant,
    choose_arm,
    wants_shadow,
)
from inference_worker.gateway.shadow import GRPC_METHOD, ShadowCopy
from inference_worker.grpc_call import BIDI, FAST_INFER, UNARY, Call
from inference_worker.grpc_server import RpcServer
from inference_worker.h2_send import ReadScope

log = logging.getLogger("inference_worker.gateway")

SERVICE = "inference.GRPCInferenceService"
STREAM_WINDOW = 256
_NOT_FORWARDED = frozenset({"user-agent", "te", "content-type", "host"})


class Router(Protocol):
    """What the proxy reads of the gateway: its current routes and counters."""

    routes: dict[bytes, Route]
    loaded: bool
    rng: Random
    activator: Activator

    def series(self, route: Route, variant: Variant, replica: Replica | None) -> Series: ...

    def http_load(self, url: str) -> float: ...

    def offer_shadow(self, copy: ShadowCopy) -> None: ...


class GrpcProxy:
    """The gateway's gRPC server, its connections to the replicas and their outstanding calls."""

    def __init__(self, router: Router, config: GatewayConfig) -> None:
        self.router = router
        self.key_header = config.routing_key_header.lower()
        self.timeout_s = config.upstream_timeout_s
        self.outstanding: dict[str, int] = {}
        self._pb2, _ = build_protos.load()
        scope = ReadScope()  # a client's requests go to the replicas when its read ends, and back
        self.upstreams = Upstreams(config.max_body_bytes, scope, forward_below_s=config.upstream_timeout_s)
        self._seen: dict[tuple[tuple[bytes, bytes], ...], tuple[bytes | None, tuple[Any, ...]]] = {}
        self._server = RpcServer(max_header_bytes=64 * 1024, max_message=config.max_body_bytes, scope=scope)
        self._server.add(f"/{SERVICE}/ModelInfer", FAST_INFER, None, self.model_infer_now)
        unary: dict[str, Callable[[bytes, Call], Any]] = {
            "ModelReady": self._forward("ModelReady"),
            "ModelMetadata": self._forward("ModelMetadata"),
            **self._own_answers(),
        }
        for name, handler in unary.items():
            self._server.add(f"/{SERVICE}/{name}", UNARY, None, handler)
        self._server.add(f"/{SERVICE}/ModelStreamInfer", BIDI, None, self.model_stream_infer)

    def _own_answers(self) -> dict[str, Callable[[bytes, Call], Any]]:
        pb2 = self._pb2

        async def live(request: bytes, context: Call) -> bytes:
            return bytes(pb2.ServerLiveResponse(live=True).SerializeToString())

        async def ready(request: bytes, context: Call) -> bytes:
            return bytes(pb2.ServerReadyResponse(ready=self.router.loaded).SerializeToString())

        async def metadata(request: bytes, context: Call) -> bytes:
            answer = pb2.ServerMetadataResponse(**identity.server_metadata())
            return bytes(answer.SerializeToString())

        return {"ServerLive": live, "ServerReady": ready, "ServerMetadata": metadata} | shared_memory.REFUSALS

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        return await self._server.start(host, port)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish for ``grace`` seconds, close the connections."""
        await self._server.stop(grace)
        self.upstreams.close()

    def keep_only(self, table: RoutingTable) -> None:
        """Close the connections to replicas no longer in ``table`` (after their calls finish)."""
        targets = {r.grpc for route in table.deployments.values() for v in route.variants for r in v.replicas}
        self.upstreams.keep_only(targets)

    def count(
        self, route: Route, variant: Variant, replica: Replica | None, status: int, seconds: float
    ) -> None:
        """Count an answer in the gateway's series (on the gateway's loop)."""
        self.router.series(route, variant, replica).answered(status, seconds)

    def _retried(self, route: Route, variant: Variant, replica: Replica) -> None:
        self.router.series(route, variant, replica).retries += 1

    # -- routing -----------------------------------------------------------------------------
    @property
    def rng(self) -> Random:
        return self.router.rng

    def load(self, url: str) -> float:
        return self.router.http_load(url) + self.outstanding.get(url, 0)

    def metadata_of(self, context: Call) -> tuple[bytes | None, tuple[Any, ...]]:
        """The routing key, and the metadata passed on to the replica (a client repeats its own)."""
        found = self._seen.get(context.headers)
        if found is None:
            found = self._read_metadata(context)
            if sum(len(name) + len(value) for name, value in context.headers) <= 4096:  # kept: small only
                if len(self._seen) >= 256:
                    self._seen.clear()
                self._seen[context.headers] = found
        return found

    def _read_metadata(self, context: Call) -> tuple[bytes | None, tuple[Any, ...]]:
        key: bytes | None = None
        passed = []
        for name, value in context.invocation_metadata() or ():
            if name == self.key_header:
                key = value.encode() if isinstance(value, str) else value
            if not (name.startswith((":", "grpc-")) or name in _NOT_FORWARDED):
                passed.append((name, value))
        return key, tuple(passed)

    def route_of(self, request: bytes, key: bytes | None) -> tuple[Route, Variant]:
        try:
            name = grpc_wire.read_name(request)
        except grpc_wire.WireError as exc:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}") from None
        if not name:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, "the request names no model (deployment)")
        router = self.router
        route = router.routes.get(name.encode())
        if route is None:
            if not router.loaded:
                raise Failure(grpc.StatusCode.UNAVAILABLE, "the gateway has no routing table yet")
            raise Failure(grpc.StatusCode.NOT_FOUND, f"unknown deployment {name!r}")
        variant = choose_arm(route, key, router.rng)
        if variant is None:
            message = f"deployment {route.name!r} has no variant with traffic weight"
            raise Failure(grpc.StatusCode.UNAVAILABLE, message)
        return route, variant

    async def hold(self, route: Route, variant: Variant) -> tuple[Route, Variant] | str:
        """Wait in the activator for a replica of a variant at zero: its refreshed arm, or why not."""
        return await grpc_hold.hold(self.router.activator, route, variant)

    def retry(
        self, route: Route, variant: Variant, replica: Replica, error: UpstreamError, tried: set[str]
    ) -> bool:
        """Whether to try another replica of the arm after ``error`` (each at most once)."""
        if error.status in RETRYABLE and len(tried) + 1 < len(variant.grpc_replicas):
            tried.add(replica.url)
            self._retried(route, variant, replica)
            return True
        return False

    def done_with(self, url: str) -> None:
        """A call to the replica at ``url`` ended (``outstanding``)."""
        left = self.outstanding[url] - 1
        if left:
            self.outstanding[url] = left
        else:
            del self.outstanding[url]

    def mirror(self, route: Route, request: bytes, answer: bytes, seconds: float) -> None:
        live = UpstreamResponse(200, b"", answer)
        for shadow in route.shadows:
            if not wants_shadow(shadow, self.router.rng):
                continue
            body = (
                request
                if shadow.model_name == route.name
                else grpc_wire.with_name(request, shadow.model_name)
            )
            replicas = [(*_host_port(r.grpc), r.version) for r in shadow.grpc_replicas]
            copy = ShadowCopy(
                route.name, shadow.name, shadow.version, replicas, GRPC_METHOD, b"", b"", body, live, seconds
            )  # fmt: skip
            self.router.offer_shadow(copy)

    def timeout_of(self, context: Call) -> float:
        remaining = context.time_remaining()
        return self.timeout_s if remaining is None else max(0.0, min(remaining, self.timeout_s))

    # -- the RPCs ----------------------------------------------------------------------------
    def model_infer_now(self, request: bytes, call: Call) -> Callable[[], None] | None:
        """``ModelInfer``, from callbacks: returns what cancels it."""
        return model_infer(self, request, call)

    def _forward(self, method: str) -> Callable[[bytes, Call], Any]:
        """``ModelReady`` / ``ModelMetadata``: answered by a replica of the chosen arm."""
        path = f"/{SERVICE}/{method}".encode()

        async def forward(request: bytes, context: Call) -> bytes:
            key, metadata = self.metadata_of(context)
            try:
                variant, replica, answer = await call_replica(
                    self, path, request, key, metadata, self.timeout_of(context)
                )
            except Failure as failure:
                await context.abort(failure.code, failure.message)
            await context.send_initial_metadata(labels_of(variant.name, replica.version))
            return answer

        return forward

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Call) -> AsyncIterator[bytes]:
        key, metadata = self.metadata_of(context)
        loop = asyncio.get_running_loop()
        window: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue(STREAM_WINDOW)

        async def one(request: bytes) -> bytes:
            try:
                _, replica, answer = await call_replica(self, PATH, request, key, metadata, self.timeout_s)
            except Failure as failure:
                return pb_wire.stream_error(failure.message)
            return pb_wire.stream_response(answer + replica.grpc_labels)

        async def read() -> None:
            try:
                async for request in requests:
                    task = loop.create_task(one(request))
                    try:
                        await window.put(task)
                    except asyncio.CancelledError:
                        task.cancel()
                        raise
            except Exception:  # never leave the answering side waiting for an end that does not come
                log.exception("reading a ModelStreamInfer stream failed")
            await window.put(None)

        reader = loop.create_task(read())
        try:
            while (task := await window.get()) is not None:
                yield await task
        finally:
            reader.cancel()
            while not window.empty():
                if (task := window.get_nowait()) is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)
