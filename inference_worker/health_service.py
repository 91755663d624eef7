"""``grpc.health.v1.Health`` for the worker's gRPC server: ``Check`` and ``Watch``, as grpcio's servicer.

A service never set is unknown: ``Check`` answers ``NOT_FOUND``, ``Watch``
sends ``SERVICE_UNKNOWN`` and waits. ``Watch`` sends the current status, then
each change. After ``enter_graceful_shutdown`` every service is
``NOT_SERVING`` for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

HEALTH_SERVICE = "grpc.health.v1.Health"
_Response = health_pb2.HealthCheckResponse


class Health:
    """Statuses by service name and the watchers of each."""

    request_type = health_pb2.HealthCheckRequest

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._watchers: dict[str, set[asyncio.Queue[int]]] = {}
        self._final = False

    def set(self, service: str, serving: bool) -> None:
        if not self._final:
            self._put(service, _Response.SERVING if serving else _Response.NOT_SERVING)

    def enter_graceful_shutdown(self) -> None:
        for service in list(self._status):
            self._put(service, _Response.NOT_SERVING)
        self._final = True

    def _put(self, service: str, status: int) -> None:
        if self._status.get(service) == status:
            return
        self._status[service] = status
        for queue in self._watchers.get(service, ()):
            queue.put_nowait(status)

    def methods(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """``Check`` and ``Watch``, taking a request and a call context as the servicer's RPCs do."""

        async def check(request: Any, context: Any) -> Any:
            status = self._status.get(request.service)
            if status is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            return _Response(status=status)

        async def watch(request: Any, context: Any) -> AsyncIterator[Any]:
            queue: asyncio.Queue[int] = asyncio.Queue()
            watchers = self._watchers.setdefault(request.service, set())
            watchers.add(queue)
            try:
                last = self._status.get(request.service, _Response.SERVICE_UNKNOWN)
                yield _Response(status=last)
                while True:
                    status = await queue.get()
                    if status != last:
                        last = status
                        yield _Response(status=status)
            finally:
                watchers.discard(queue)

        return check, watch
