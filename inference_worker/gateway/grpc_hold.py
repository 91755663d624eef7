"""A gRPC call for a variant scaled to zero, held by the gateway's activator until a replica is routed.

The activator (``activator``) lives on the gateway's loop, the gRPC server on a thread of its own
(``grpc_thread``). ``hold`` hands the activator a ``GrpcHeld`` on the gateway's loop and waits on the
gRPC loop; the activator's ``resume`` or ``give_up`` (gateway loop) settles the wait back on the gRPC
loop. Held gRPC and HTTP requests share one bounded queue and one timeout per variant, and together
make up the ``held`` count of the activation request the platform reads.
"""

from __future__ import annotations

import asyncio

from inference_worker.gateway.activator import Activator
from inference_worker.gateway.routing import Route, Variant


class GrpcHeld:
    """The activator's view of a waiting gRPC call (``activator.Held``)."""

    def __init__(self, route: Route, variant: Variant, loop: asyncio.AbstractEventLoop) -> None:
        self.route = route
        self.variant = variant
        self._loop = loop
        self.outcome: asyncio.Future[tuple[Route, Variant] | str] = loop.create_future()

    def resume(self, route: Route, variant: Variant) -> None:
        self._settle((route, variant))

    def give_up(self, status: int, message: str) -> None:
        self._settle(message)

    def _settle(self, value: tuple[Route, Variant] | str) -> None:
        def settle() -> None:
            if not self.outcome.done():  # the caller may have gone (its deadline, a cancel)
                self.outcome.set_result(value)

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the gRPC loop has ended: nobody waits
            return


async def hold(
    activator: Activator, main: asyncio.AbstractEventLoop, route: Route, variant: Variant
) -> tuple[Route, Variant] | str:
    """The route and variant to go on with once a replica is routed, or why none came (a message)."""
    held = GrpcHeld(route, variant, asyncio.get_running_loop())

    def enqueue() -> None:
        if not activator.hold(held):
            what = f"deployment {route.name!r} variant {variant.name!r}"
            held.give_up(503, f"{what} is starting and holds as many requests as it can")

    main.call_soon_threadsafe(enqueue)
    return await held.outcome
