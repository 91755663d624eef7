"""The activator: requests for a variant scaled to zero wait here while the platform starts a replica.

Knative's activator, inside the gateway. A request routed to a variant that has
no replica and is marked ``activate`` in the routing table is held in a bounded
queue per variant (``--activator-queue-size``; a request beyond it gets 503 at
once) for at most ``--activator-timeout-s`` (503 after). While a variant has held
requests, the gateway writes an activation request (``contracts.activation``) to
Redis about once a second; the platform's autoscaler starts a replica, and the
next routing table lists it: ``release`` then sends every held request on, in
arrival order, through the same replica choice as any request. A request whose
client left (its connection closed, its gRPC call cancelled or past its deadline)
is dropped: it holds no place in the queue and never reaches a replica.

Everything here runs on the event loop thread; nothing is awaited but the
Redis write, which runs as its own task and never holds a request up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from inference_worker.contracts.activation import ActivationRequest, activation_key, encode_activation
from inference_worker.gateway.routing import Route, Variant

log = logging.getLogger("inference_worker.gateway")

RESEND_S = 1.0
"""How often a variant's activation request is written again while requests wait for it."""


class Held(Protocol):
    """A request waiting for a replica (the gateway's ``Call``)."""

    route: Route
    variant: Variant

    @property
    def abandoned(self) -> bool:
        """The client is gone: nobody waits for the answer."""

    def resume(self, route: Route, variant: Variant) -> None:
        """Go on with ``variant`` of ``route``, which has a replica now."""

    def give_up(self, status: int, message: str) -> None:
        """Answer the client with an error and count it."""


@dataclass(slots=True)
class _Queue:
    calls: deque[tuple[float, Held]]
    sent_at: float = 0.0


class Activator:
    """Held requests by (deployment, variant); ``notify`` asks for a replica."""

    def __init__(self, *, queue_size: int, timeout_s: float, notify: Callable[[str, str, int], None]) -> None:
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.notify = notify
        self.queues: dict[tuple[str, str], _Queue] = {}

    def hold(self, call: Held) -> bool:
        """Keep ``call`` until its variant has a replica; False when the variant's queue is full."""
        key = (call.route.name, call.variant.name)
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue(deque())
        if len(queue.calls) >= self.queue_size:
            queue.calls = deque(entry for entry in queue.calls if not entry[1].abandoned)
            if len(queue.calls) >= self.queue_size:
                return False
        now = time.monotonic()
        queue.calls.append((now + self.timeout_s, call))
        if now - queue.sent_at >= RESEND_S:
            queue.sent_at = now
            self.notify(key[0], key[1], len(queue.calls))
        return True

    def forget(self, call: Held) -> None:
        """``call`` no longer waits (its client left)."""
        queue = self.queues.get((call.route.name, call.variant.name))
        if queue is not None:
            queue.calls = deque(entry for entry in queue.calls if entry[1] is not call)

    def held(self) -> dict[tuple[str, str], int]:
        """Requests waiting, by (deployment, variant)."""
        return {key: len(queue.calls) for key, queue in self.queues.items() if queue.calls}

    def release(self, routes: Mapping[bytes, Route]) -> None:
        """A new table: send on the requests of variants that have a replica now, drop the lost ones."""
        for key in list(self.queues):
            route = routes.get(key[0].encode())
            variant = next((v for v in route.variants if v.name == key[1]), None) if route else None
            if variant is not None and variant.activate and not variant.replicas:
                continue  # still starting
            queue = self.queues.pop(key)
            for _, call in queue.calls:
                if call.abandoned:
                    continue
                if route is None or variant is None:
                    call.give_up(503, f"deployment {key[0]!r} variant {key[1]!r} left the routing table")
                elif not variant.replicas:
                    call.give_up(503, f"no ready replica of deployment {key[0]!r} variant {key[1]!r}")
                else:
                    call.resume(route, variant)

    def sweep(self) -> None:
        """Answer 503 to requests past their time; ask again for variants still waiting."""
        now = time.monotonic()
        for key, queue in list(self.queues.items()):
            if any(call.abandoned for _, call in queue.calls):
                queue.calls = deque(entry for entry in queue.calls if not entry[1].abandoned)
            calls = queue.calls
            while calls and calls[0][0] <= now:
                _, call = calls.popleft()
                call.give_up(
                    503,
                    f"no replica of deployment {key[0]!r} variant {key[1]!r} became ready "
                    f"within {self.timeout_s:g} s",
                )
            if not calls:
                del self.queues[key]
            elif now - queue.sent_at >= RESEND_S:
                queue.sent_at = now
                self.notify(key[0], key[1], len(calls))

    def close(self) -> None:
        """The gateway stops: every held request gets its answer now."""
        for key, queue in self.queues.items():
            for _, call in queue.calls:
                call.give_up(503, f"the gateway is shutting down; no replica of {key[0]!r}/{key[1]!r} yet")
        self.queues.clear()


class ActivationSender:
    """Writes activation requests to Redis off the request path, one task per write."""

    def __init__(
        self, client: aioredis.Redis, routing_key: str, gateway_id: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.client = client
        self.key = activation_key(routing_key)
        self.gateway_id = gateway_id
        self.loop = loop
        self.tasks: set[asyncio.Task[None]] = set()
        self._failing = False

    def __call__(self, deployment: str, variant: str, held: int) -> None:
        request = ActivationRequest(deployment, variant, self.gateway_id, held, time.time())
        task = self.loop.create_task(self.send(request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send(self, request: ActivationRequest) -> None:
        payload = orjson.dumps(encode_activation(request))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(self.key, request.field, payload)
                pipe.publish(self.key, request.field)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("cannot ask for a replica of %s: %s", request.field, exc)
            self._failing = True
            return
        if self._failing or request.held == 1:
            log.info("asked the platform for a replica of %s (%d held)", request.field, request.held)
        self._failing = False
