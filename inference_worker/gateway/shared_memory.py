"""What the gateway answers to the system shared memory extension: a clear refusal, HTTP and gRPC.

Shared memory is between a client and a worker on one host: the objects live in that host's
``/dev/shm`` and each worker keeps its own regions. Through the gateway neither holds (replicas
run on other hosts or in containers with a ``/dev/shm`` of their own, and the clients of one
worker would share its region names), so the gateway forwards none of it: the control routes and
RPCs answer 501 / ``UNIMPLEMENTED`` with ``MESSAGE``. An inference request whose tensors name a
region is proxied as bytes like any other, and the worker refuses it (400) unless it was started
with ``--system-shared-memory on``, which a worker behind a gateway should not be.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc

from inference_worker.shm import PREFIX

MESSAGE: Final = (
    "system shared memory is not available through the gateway: it is for clients on a worker's "
    "own host, which register their regions with that worker directly"
)
RPCS: Final = ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister")


def is_extension_path(path: bytes) -> bool:
    """A path of the extension's HTTP routes (``/v2/systemsharedmemory...``)."""
    return path.startswith(PREFIX)


async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    """An extension's RPC, its message kept as bytes: refused with ``MESSAGE``."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, MESSAGE)
    return b""  # not reached: abort raises


REFUSALS: Final[dict[str, Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]]] = (
    dict.fromkeys(RPCS, refuse)
)
"""The gateway's own answers to the extension's RPCs."""
