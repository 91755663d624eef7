"""One gRPC ``ModelInfer`` through the gateway from callbacks, as HTTP's ``call.Call`` goes.

The proxy's coroutine path (``GrpcProxy.model_infer``) costs a task, a few
coroutines and futures per call; on a machine whose cores the gateway shares
with the workers that was most of its gRPC CPU. ``FastInfer`` routes the call
(same ``choose_arm``, ``choose_replica``, retries, counting and shadows as the
coroutine path, through the proxy's own methods), starts it on an open
connection to the replica (``Upstreams.send``) and answers from the upstream
callback. What needs to wait goes on as a task: a variant held at zero replicas
takes the coroutine path whole, a replica with no open connection is connected to
first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from random import Random
from typing import Any, Protocol

import grpc

from inference_worker.gateway import grpc_wire
from inference_worker.gateway.grpc_upstream import UpstreamError, Upstreams
from inference_worker.gateway.routing import Replica, Route, Variant, choose_replica
from inference_worker.grpc_call import Call

PATH = b"/inference.GRPCInferenceService/ModelInfer"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
HTTP_OF: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
}
"""The HTTP status an answer counts as in the gateway's series (anything else: 502)."""


class Failure(Exception):
    """A call that ends with ``code`` and ``message`` (and the labels of the variant chosen, if any)."""

    def __init__(self, code: grpc.StatusCode, message: str, labels: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.labels = tuple(labels)


class Proxy(Protocol):
    """What a call needs of the proxy (``grpc_proxy.GrpcProxy``)."""

    outstanding: dict[str, int]
    upstreams: Upstreams

    @property
    def rng(self) -> Random: ...

    def load(self, url: str) -> float: ...

    def metadata_of(self, context: Call) -> tuple[bytes | None, tuple[Any, ...]]: ...

    def timeout_of(self, context: Call) -> float: ...

    def route_of(self, request: bytes, key: bytes | None) -> tuple[Route, Variant]: ...

    def count(
        self, route: Route, variant: Variant, replica: Replica | None, status: int, seconds: float
    ) -> None: ...

    def mirror(self, route: Route, request: bytes, answer: bytes, seconds: float) -> None: ...

    def retry(
        self, route: Route, variant: Variant, replica: Replica, error: UpstreamError, tried: set[str]
    ) -> bool: ...

    def done_with(self, url: str) -> None: ...

    async def model_infer(self, request: bytes, context: Call) -> bytes: ...


class FastInfer:
    """One call on its way through the replicas of its arm."""

    __slots__ = (
        "call",
        "cancel_upstream",
        "metadata",
        "proxy",
        "replica",
        "request",
        "route",
        "started",
        "task",
        "timeout",
        "tried",
        "variant",
    )

    def __init__(self, proxy: Proxy, request: bytes, call: Call) -> None:
        self.proxy = proxy
        self.request = request
        self.call = call
        self.tried: set[str] = set()
        self.replica: Replica | None = None
        self.cancel_upstream: Callable[[], None] | None = None
        self.task: asyncio.Task[None] | None = None

    def begin(self) -> Callable[[], None] | None:
        """Route and send; returns what cancels the call (None once answered or on the coroutine path)."""
        proxy, call = self.proxy, self.call
        key, self.metadata = proxy.metadata_of(call)
        self.timeout = proxy.timeout_of(call)
        self.started = time.perf_counter()
        try:
            route, variant = proxy.route_of(self.request, key)
        except Failure as failure:
            call.fail(failure.code.value[0], failure.message)
            return None
        if variant.activate and not variant.replicas:  # held by the activator: the coroutine path
            call.start(proxy.model_infer, self.request)
            return None
        self.route, self.variant = route, variant
        if variant.model_name != route.name:
            self.request = grpc_wire.with_name(self.request, variant.model_name)
        self._attempt()
        return self.cancel

    def _attempt(self) -> None:
        proxy, variant = self.proxy, self.variant
        replica = choose_replica(variant.grpc_replicas, proxy.load, proxy.rng, self.tried)
        if replica is None:
            labels = labels_of(variant.name, variant.version)
            return self._fail(no_replica(self.route, variant, self.tried, labels))
        self.replica = replica
        proxy.outstanding[replica.url] = proxy.outstanding.get(replica.url, 0) + 1
        self.cancel_upstream = proxy.upstreams.send(
            replica.grpc, PATH, self.request, self.metadata, self.timeout, self._answered
        )
        if self.cancel_upstream is None:  # no open connection with room: open one first
            self.task = asyncio.get_running_loop().create_task(self._connect(replica))
        return None

    async def _connect(self, replica: Replica) -> None:
        try:
            answer = await self.proxy.upstreams.call(
                replica.grpc, PATH, self.request, self.metadata, self.timeout
            )
        except UpstreamError as error:
            self.task = None
            return self._answered(error)
        self.task = None
        return self._answered(answer)

    def cancel(self) -> None:
        """The client went away (or its deadline passed): stop the call to the replica."""
        if self.cancel_upstream is not None:
            self.cancel_upstream()
            self.cancel_upstream = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.replica is not None:
            self.proxy.done_with(self.replica.url)
            self.replica = None

    def _answered(self, outcome: bytes | UpstreamError) -> None:
        self.cancel_upstream = None
        replica, proxy, route, variant = self.replica, self.proxy, self.route, self.variant
        if replica is None:  # cancelled meanwhile
            return None
        self.replica = None
        proxy.done_with(replica.url)
        labels = labels_of(variant.name, replica.version)
        if isinstance(outcome, UpstreamError):
            if proxy.retry(route, variant, replica, outcome, self.tried):
                return self._attempt()
            return self._fail(upstream_failure(route, variant, outcome, labels))
        seconds = time.perf_counter() - self.started
        proxy.count(route, variant, replica, 200, seconds)
        if route.shadows:
            proxy.mirror(route, self.request, outcome, seconds)
        call = self.call
        call.set_initial_metadata(labels)
        call.reply(outcome + replica.grpc_labels)
        return None

    def _fail(self, failure: Failure) -> None:
        seconds = time.perf_counter() - self.started
        self.proxy.count(self.route, self.variant, None, HTTP_OF.get(failure.code, 502), seconds)
        call = self.call
        if failure.labels:
            call.set_initial_metadata(failure.labels)
        call.fail(failure.code.value[0], failure.message)


def labels_of(variant: str, version: str) -> tuple[tuple[str, str], ...]:
    """The initial metadata that names the variant and model version of an answer."""
    return (("x-kiln-variant", variant), ("x-kiln-model-version", version))


def no_replica(route: Route, variant: Variant, tried: set[str], labels: Sequence[tuple[str, str]]) -> Failure:
    what = f"deployment {route.name!r} variant {variant.name!r}"
    if not tried:
        return Failure(grpc.StatusCode.UNAVAILABLE, f"no ready replica of {what} serves gRPC", labels)
    return Failure(grpc.StatusCode.UNAVAILABLE, f"no replica of {what} could answer", labels)


def upstream_failure(
    route: Route, variant: Variant, error: UpstreamError, labels: Sequence[tuple[str, str]]
) -> Failure:
    code, message = error.status, error.details or error.status.name
    if code == grpc.StatusCode.UNAVAILABLE:  # unreachable, loading or draining: say which arm
        what = f"deployment {route.name!r} variant {variant.name!r}"
        message = f"no replica of {what} could answer (last: {message})"
    return Failure(code, message, labels)
