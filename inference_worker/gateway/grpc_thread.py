"""A grpc.aio server on a thread of its own, on asyncio's standard event loop.

grpc.aio on uvloop (the gateway's loop) sometimes leaves a cancelled task
pending forever at shutdown, so the gateway never exited (measured: about one
stop in four hung; none in 28 on this thread). ``GrpcThread`` starts the
thread, builds the server there (grpc.aio objects belong to the loop they are
made on), reports the bound port, and on ``stop`` runs the owner's clean-up
coroutine on that loop before the thread ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class GrpcThread:
    """The thread, its loop, and the server built on it."""

    def __init__(self, options: list[tuple[str, Any]], handler: Callable[[], grpc.GenericRpcHandler]) -> None:
        self.options = options
        self.handler = handler
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._done: asyncio.Event | None = None

    async def start(self, host: str, port: int) -> int:
        """Start the thread and listen; returns the bound port."""
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(host, port, bound), name="grpc", daemon=True)
        self._thread.start()
        return await asyncio.wrap_future(bound)

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the thread's loop (nothing once it has ended)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # closed just now
                return

    def _run(self, host: str, port: int, bound: concurrent.futures.Future[int]) -> None:
        loop = self.loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(host, port, bound))
        finally:
            loop.close()

    async def _serve(self, host: str, port: int, bound: concurrent.futures.Future[int]) -> None:
        done = self._done = asyncio.Event()
        server = grpc.aio.server(options=[*self.options, ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((self.handler(),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            number = int(server.add_insecure_port(address))
            if number == 0:
                raise OSError(f"cannot listen for gRPC on {address}")
            await server.start()
        except Exception as exc:
            bound.set_exception(exc)
            return
        self._server = server
        bound.set_result(number)
        await done.wait()

    async def stop(self, grace: float, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Stop taking calls, give those in flight ``grace`` s, run ``cleanup`` there; the thread ends."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def stopping() -> None:
            if self._server is not None:
                await self._server.stop(grace)
            await cleanup()
            if self._done is not None:
                self._done.set()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(stopping(), loop))
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)
