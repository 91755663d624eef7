"""A gRPC call for a variant scaled to zero, held by the gateway's activator until a replica is routed.

``hold`` hands the activator a ``GrpcHeld`` and waits; the activator's ``resume`` or ``give_up``
settles the wait. Held gRPC and HTTP requests share one bounded queue and one timeout per variant,
and together make up the ``held`` count of the activation request the platform reads.
"""

from __future__ import annotations

import asyncio

from inference_worker.gateway.activator import Activator
from inference_worker.gateway.routing import Route, Variant


class GrpcHeld:
    """The activator's view of a waiting gRPC call (``activator.Held``)."""

    def __init__(self, route: Route, variant: Variant) -> None:
        self.route = route
        self.variant = variant
        self.outcome: asyncio.Future[tuple[Route, Variant] | str] = asyncio.get_running_loop().create_future()

    @property
    def abandoned(self) -> bool:
        return self.outcome.done()  # settled, or cancelled with its caller

    def resume(self, route: Route, variant: Variant) -> None:
        self._settle((route, variant))

    def give_up(self, status: int, message: str) -> None:
        self._settle(message)

    def _settle(self, value: tuple[Route, Variant] | str) -> None:
        if not self.outcome.done():  # the caller may have gone (its deadline, a cancel)
            self.outcome.set_result(value)


async def hold(activator: Activator, route: Route, variant: Variant) -> tuple[Route, Variant] | str:
    """The route and variant to go on with once a replica is routed, or why none came (a message)."""
    held = GrpcHeld(route, variant)
    if not activator.hold(held):
        what = f"deployment {route.name!r} variant {variant.name!r}"
        return f"{what} is starting and holds as many requests as it can"
    try:
        return await held.outcome
    finally:
        if not held.outcome.done() or held.outcome.cancelled():
            activator.forget(held)  # the call was cancelled (its deadline, the client) while held
