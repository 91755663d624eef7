"""One HTTP request through the gateway: the replicas of its arm tried in turn, held by the
activator while its variant has none, answered with the variant's labels and counted."""

from __future__ import annotations

import time
from random import Random
from typing import Protocol

from inference_worker.gateway.activator import Activator
from inference_worker.gateway.metrics import Series
from inference_worker.gateway.proxy import UpstreamError, UpstreamResponse, Upstreams
from inference_worker.gateway.routing import Replica, Route, Target, Variant, choose_replica
from inference_worker.gateway.server import GatewayRequest, GatewayResponse, Reply, json_response


class Gateway(Protocol):
    """What a call needs of the gateway that made it (``app.Gateway``)."""

    upstreams: Upstreams | None
    rng: Random
    activator: Activator

    def series(self, route: Route, variant: Variant, replica: Replica | None) -> Series: ...

    def mirror(self, call: Call, live: UpstreamResponse, seconds: float) -> None: ...


def _head(method: bytes, url: bytes, length: int, headers: bytes) -> bytes:
    return b"%s %s HTTP/1.1\r\nContent-Length: %d\r\n%s" % (method, url, length, headers)


class Call:
    """One client request on its way through the replicas of its arm."""

    __slots__ = (
        "gateway",
        "head",
        "method",
        "replica",
        "reply",
        "request",
        "route",
        "target",
        "tried",
        "variant",
    )

    def __init__(
        self,
        gateway: Gateway,
        request: GatewayRequest,
        reply: Reply,
        route: Route,
        variant: Variant,
        method: bytes,
        target: Target,
    ) -> None:
        self.gateway = gateway
        self.request = request
        self.reply = reply
        self.route = route
        self.variant = variant
        self.method = method
        self.target = target
        self.head = _head(method, self.upstream_url(variant), len(request.body), request.headers)
        self.tried: set[str] | tuple[()] = ()
        self.replica: Replica | None = None

    def upstream_url(self, variant: Variant) -> bytes:
        """The request's URL with the deployment name replaced by the variant's model name."""
        target = self.target
        if variant.model == target.name:
            return self.request.url
        return target.prefix + variant.model + target.rest

    def attempt(self) -> None:
        gateway = self.gateway
        upstreams = gateway.upstreams
        assert upstreams is not None  # noqa: S101 - requests arrive once serving
        replica = choose_replica(self.variant.replicas, upstreams.load, gateway.rng, self.tried)
        if replica is None:
            what = f"deployment {self.route.name!r} variant {self.variant.name!r}"
            if self.variant.activate and not self.tried:
                if gateway.activator.hold(self):
                    return None
                return self._fail(503, f"{what} is starting and holds as many requests as it can")
            return self._fail(503, f"no ready replica of {what}")
        self.replica = replica
        pool = upstreams.pool(replica.url, replica.host, replica.port)
        deadline = upstreams.loop.time() + upstreams.timeout_s
        return pool.request(self.head, self.request.body, self.answered, deadline)

    def resume(self, route: Route, variant: Variant) -> None:
        """Held by the activator until ``variant`` had a replica: go on with the new table's route."""
        self.route, self.variant = route, variant
        self.head = _head(
            self.method, self.upstream_url(variant), len(self.request.body), self.request.headers
        )
        self.attempt()

    @property
    def abandoned(self) -> bool:
        return self.request.client.closed

    def give_up(self, status: int, message: str) -> None:
        self._fail(status, message)

    def answered(self, result: UpstreamResponse | UpstreamError) -> None:
        if type(result) is UpstreamResponse:
            if result.status != 503 or not self._retry():
                self._respond(result)
            return
        assert isinstance(result, UpstreamError)  # noqa: S101 - the other member of the union
        if not (result.retryable and self._retry()):
            message = result.message
            if result.retryable:  # no replica left to try
                message = f"no replica of deployment {self.route.name!r} variant {self.variant.name!r} "
                message += f"could be reached (last: {result.message})"
            self._fail(503 if result.retryable else result.status, message)

    def _retry(self) -> bool:
        """Try another replica of the arm, if one is left; each replica at most once."""
        replica = self.replica
        tried = self.tried if isinstance(self.tried, set) else set()
        if replica is not None:
            tried.add(replica.url)
        self.tried = tried
        if all(r.url in tried for r in self.variant.replicas):
            return False
        self.gateway.series(self.route, self.variant, replica).retries += 1
        self.attempt()
        return True

    def _respond(self, result: UpstreamResponse) -> None:
        replica = self.replica
        assert replica is not None  # noqa: S101 - only after an attempt
        self.reply(GatewayResponse(result.status, result.headers + replica.labels, result.body))
        seconds = time.perf_counter() - self.request.received
        self.gateway.series(self.route, self.variant, replica).answered(result.status, seconds)
        if self.route.shadows and result.status == 200:
            self.gateway.mirror(self, result, seconds)

    def _fail(self, status: int, message: str) -> None:
        replica = self.replica
        labels = replica.labels if replica is not None else self.variant.labels
        self.reply(json_response(status, {"error": message}, labels))
        seconds = time.perf_counter() - self.request.received
        self.gateway.series(self.route, self.variant, replica).answered(status, seconds)
