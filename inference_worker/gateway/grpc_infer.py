"""One gRPC call through the gateway to a replica of its arm, from callbacks, as HTTP's ``call.Call`` goes.

``ReplicaCall`` is the one walk through the replicas of an arm for every RPC the
gateway forwards: ``choose_replica`` (least outstanding), the call started on
an open connection to the replica (``Upstreams.send``) and answered from the
upstream callback, a retry on another replica after ``UNAVAILABLE`` or
``RESOURCE_EXHAUSTED`` (each at most once), and for ``ModelInfer`` the count in
the gateway's series and the copies to shadows. No task per call: a task runs
only what has to wait (a variant held at zero replicas waits in the activator,
a replica with no open connection is connected to first). It ends in
``answered`` or ``failed``: ``model_infer`` answers a unary call's ``Call``,
``call_replica`` a coroutine (streams, ``ModelReady``, ``ModelMetadata``).
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

    async def hold(self, route: Route, variant: Variant) -> tuple[Route, Variant] | str: ...

    def count(
        self, route: Route, variant: Variant, replica: Replica | None, status: int, seconds: float
    ) -> None: ...

    def mirror(self, route: Route, request: bytes, answer: bytes, seconds: float) -> None: ...

    def retry(
        self, route: Route, variant: Variant, replica: Replica, error: UpstreamError, tried: set[str]
    ) -> bool: ...

    def done_with(self, url: str) -> None: ...


class ReplicaCall:
    """One call on its way through the replicas of its arm; a subclass says where the outcome goes."""

    __slots__ = (
        "cancel_upstream",
        "infer",
        "metadata",
        "path",
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

    def __init__(
        self,
        proxy: Proxy,
        route: Route,
        variant: Variant,
        path: bytes,
        request: bytes,
        metadata: tuple[Any, ...],
        timeout: float,
    ) -> None:
        self.proxy = proxy
        self.route = route
        self.variant = variant
        self.path = path
        self.infer = path == PATH  # counted in the series and copied to shadows
        self.request = request
        self.metadata = metadata
        self.timeout = timeout
        self.started = time.perf_counter()
        self.tried: set[str] = set()
        self.replica: Replica | None = None
        self.cancel_upstream: Callable[[], None] | None = None
        self.task: asyncio.Task[None] | None = None

    def answered(self, variant: Variant, replica: Replica, answer: bytes) -> None:
        """The replica's answer (the message's bytes, unlabelled)."""
        raise NotImplementedError

    def failed(self, failure: Failure) -> None:
        """No replica of the arm could answer, or one answered with an error."""
        raise NotImplementedError

    def begin(self) -> None:
        """Send (after the activator's hold when the variant is at zero replicas)."""
        if self.variant.activate and not self.variant.replicas:
            self.task = asyncio.get_running_loop().create_task(self._hold())
            return
        self._send()

    async def _hold(self) -> None:
        outcome = await self.proxy.hold(self.route, self.variant)
        self.task = None
        if isinstance(outcome, str):
            labels = labels_of(self.variant.name, self.variant.version)
            return self._fail(Failure(grpc.StatusCode.UNAVAILABLE, outcome, labels))
        self.route, self.variant = outcome
        return self._send()

    def _send(self) -> None:
        if self.variant.model_name != self.route.name:
            self.request = grpc_wire.with_name(self.request, self.variant.model_name)
        self._attempt()

    def _attempt(self) -> None:
        proxy, variant = self.proxy, self.variant
        replica = choose_replica(variant.grpc_replicas, proxy.load, proxy.rng, self.tried)
        if replica is None:
            labels = labels_of(variant.name, variant.version)
            return self._fail(no_replica(self.route, variant, self.tried, labels))
        self.replica = replica
        proxy.outstanding[replica.url] = proxy.outstanding.get(replica.url, 0) + 1
        self.cancel_upstream = proxy.upstreams.send(
            replica.grpc, self.path, self.request, self.metadata, self.timeout, self._answered
        )
        if self.cancel_upstream is None:  # no open connection with room: open one first
            self.task = asyncio.get_running_loop().create_task(self._connect(replica))
        return None

    async def _connect(self, replica: Replica) -> None:
        try:
            answer = await self.proxy.upstreams.call(
                replica.grpc, self.path, self.request, self.metadata, self.timeout
            )
        except UpstreamError as error:
            self.task = None
            return self._answered(error)
        self.task = None
        return self._answered(answer)

    def cancel(self) -> None:
        """The caller went away (or its deadline passed): stop the call to the replica."""
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
        if isinstance(outcome, UpstreamError):
            if proxy.retry(route, variant, replica, outcome, self.tried):
                return self._attempt()
            labels = labels_of(variant.name, replica.version)
            return self._fail(upstream_failure(route, variant, outcome, labels))
        if self.infer:
            seconds = time.perf_counter() - self.started
            proxy.count(route, variant, replica, 200, seconds)
            if route.shadows:
                proxy.mirror(route, self.request, outcome, seconds)
        return self.answered(variant, replica, outcome)

    def _fail(self, failure: Failure) -> None:
        if self.infer:
            seconds = time.perf_counter() - self.started
            self.proxy.count(self.route, self.variant, None, HTTP_OF.get(failure.code, 502), seconds)
        self.failed(failure)


class _UnaryInfer(ReplicaCall):
    """A ``ModelInfer`` answered on its call: labelled in its initial metadata and its parameters."""

    __slots__ = ("call",)

    def __init__(
        self,
        proxy: Proxy,
        route: Route,
        variant: Variant,
        request: bytes,
        metadata: tuple[Any, ...],
        call: Call,
    ) -> None:
        super().__init__(proxy, route, variant, PATH, request, metadata, proxy.timeout_of(call))
        self.call = call

    def answered(self, variant: Variant, replica: Replica, answer: bytes) -> None:
        call = self.call
        call.set_initial_metadata(labels_of(variant.name, replica.version))
        call.reply(answer + replica.grpc_labels)

    def failed(self, failure: Failure) -> None:
        call = self.call
        if failure.labels:
            call.set_initial_metadata(failure.labels)
        call.fail(failure.code.value[0], failure.message)


def model_infer(proxy: Proxy, request: bytes, call: Call) -> Callable[[], None] | None:
    """Route a unary ``ModelInfer`` and start it; returns what cancels it (None when it already failed)."""
    key, metadata = proxy.metadata_of(call)
    try:
        route, variant = proxy.route_of(request, key)
    except Failure as failure:
        call.fail(failure.code.value[0], failure.message)
        return None
    infer = _UnaryInfer(proxy, route, variant, request, metadata, call)
    infer.begin()
    return infer.cancel


class _Awaited(ReplicaCall):
    """A call whose outcome a coroutine awaits (``future``, set by ``call_replica``)."""

    __slots__ = ("future",)

    future: asyncio.Future[tuple[Variant, Replica, bytes]]

    def answered(self, variant: Variant, replica: Replica, answer: bytes) -> None:
        if not self.future.done():
            self.future.set_result((variant, replica, answer))

    def failed(self, failure: Failure) -> None:
        if not self.future.done():
            self.future.set_exception(failure)


async def call_replica(
    proxy: Proxy, path: bytes, request: bytes, key: bytes | None, metadata: tuple[Any, ...], timeout: float
) -> tuple[Variant, Replica, bytes]:
    """Route ``request`` (``key``: its routing key) and await the answer of a replica of the arm: the
    variant that answered, which replica, the message's bytes; or ``Failure``. ``ModelInfer`` counts
    and is copied to shadows as a unary call is."""
    route, variant = proxy.route_of(request, key)
    call = _Awaited(proxy, route, variant, path, request, metadata, timeout)
    call.future = asyncio.get_running_loop().create_future()
    call.begin()
    try:
        return await call.future
    except asyncio.CancelledError:
        call.cancel()
        raise


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
