"""The system shared memory extension on the wire: its HTTP routes, its gRPC RPCs, its outputs.

HTTP, as Triton serves it (bodies JSON, errors ``{"error": message}``)::

    GET  /v2/systemsharedmemory[/region/{name}]/status    [{"name", "key", "offset", "byte_size"}, ...]
    POST /v2/systemsharedmemory/region/{name}/register    {"key": "/obj", "offset": 0, "byte_size": N}
    POST /v2/systemsharedmemory[/region/{name}]/unregister

gRPC: ``SystemSharedMemoryStatus``, ``SystemSharedMemoryRegister`` and
``SystemSharedMemoryUnregister`` of ``inference.GRPCInferenceService`` (``SharedMemoryServicer``,
which ``grpc_api.InferenceServicer`` takes in). An output written to a region answers with its
name, datatype and shape, no data, and the parameters ``shared_memory_region``,
``shared_memory_byte_size`` (the bytes written) and ``shared_memory_offset`` when not 0; over gRPC
its ``raw_output_contents`` entry is empty, as Triton's, so the other outputs keep their places.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import grpc
import orjson

from inference_worker.dataplane import DataPlane
from inference_worker.errors import GRPC_STATUS, InvalidRequest, WorkerError
from inference_worker.shm import (
    BYTE_SIZE,
    OFFSET,
    PARAMETERS,
    PREFIX,
    REGION,
    SharedMemory,
    Window,
    grpc_values,
)

_GET, _POST = (b"GET", b"HEAD"), (b"POST",)


def http_route(shm: SharedMemory, method: bytes, path: bytes, body: bytes) -> tuple[int, object]:
    """Answer a request under ``PREFIX``: (status, JSON payload; None for an empty body).

    A refusal of the registry raises its ``WorkerError``; an unknown path is a 404, a wrong method a 405.
    """
    parts = [unquote(part.decode("latin-1")) for part in path[len(PREFIX) :].split(b"/")[1:]]
    if len(parts) == 3 and parts[0] == "region" and parts[1]:
        name, verb = parts[1], parts[2]
    elif len(parts) == 1:
        name, verb = "", parts[0]
    else:
        name, verb = "", ""
    allowed = _GET if verb == "status" else _POST
    if verb not in ("status", "unregister", "register") or (verb == "register" and not name):
        return 404, {"error": f"no route for {path.decode('latin-1')[:300]!r}"}
    if method not in allowed:
        return 405, {"error": f"method not allowed; use {allowed[0].decode()}"}
    if verb == "status":
        return 200, [_status(region) for region in shm.status(name)]
    if verb == "unregister":
        shm.unregister(name)
    else:
        key, offset, byte_size = _register_body(body)
        shm.register(name=name, key=key, offset=offset, byte_size=byte_size)
    return 200, None


def _status(region: Any) -> dict[str, object]:
    return {"name": region.name, "key": region.key, "offset": region.offset, "byte_size": region.byte_size}


def _register_body(body: bytes) -> tuple[str, int, int]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidRequest("the register body must be a JSON object with key, offset and byte_size")
    key, offset, byte_size = request.get("key"), request.get("offset", 0), request.get("byte_size")
    if not isinstance(key, str):
        raise InvalidRequest("'key' must be the shared memory object's name, a string")
    for label, value in (("offset", offset), ("byte_size", byte_size)):
        if type(value) is not int or value < 0:
            raise InvalidRequest(f"'{label}' must be a non-negative integer")
    return key, offset, byte_size  # type: ignore[return-value]


# -- outputs --------------------------------------------------------------------------------------
def grpc_windows(shm: SharedMemory, outputs: Any) -> dict[str, Window] | None:
    """The requested outputs of a gRPC request that go to shared memory (None when none does)."""
    found: dict[str, Window] | None = None
    for output in outputs:
        if any(key in output.parameters for key in PARAMETERS):
            window = shm.window(f"output '{output.name}'", grpc_values(output.parameters))
            if window is not None:
                found = found or {}
                found[output.name] = window
    return found


def output_parameters(window: Window, written: int) -> dict[str, str | int]:
    """What an output written to ``window`` answers in its ``parameters``."""
    answer: dict[str, str | int] = {REGION: window.region.name, BYTE_SIZE: written}
    if window.offset:
        answer[OFFSET] = window.offset
    return answer


def add_grpc_output(
    shm: SharedMemory, response: Any, window: Window, name: str, datatype: str, array: Any
) -> None:
    """Write output ``name`` into ``window`` and describe it in ``response`` (no data, an empty raw entry)."""
    written = shm.write(name, window, array)
    tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    for key, value in output_parameters(window, written).items():
        if isinstance(value, str):
            tensor.parameters[key].string_param = value
        else:
            tensor.parameters[key].int64_param = value
    response.raw_output_contents.append(b"")


# -- gRPC -----------------------------------------------------------------------------------------
class SharedMemoryServicer:
    """The system shared memory RPCs; the servicer that takes this in sets ``_dp`` and ``_pb2``."""

    _dp: DataPlane
    _pb2: Any

    async def SystemSharedMemoryStatus(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            regions = self._dp.shared_memory.status(request.name)
        except WorkerError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        response = self._pb2.SystemSharedMemoryStatusResponse()
        for region in regions:
            response.regions[region.name].CopyFrom(
                self._pb2.SystemSharedMemoryStatusResponse.RegionStatus(**_status(region))
            )
        return response

    async def SystemSharedMemoryRegister(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            self._dp.shared_memory.register(
                name=request.name, key=request.key, offset=request.offset, byte_size=request.byte_size
            )
        except WorkerError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        return self._pb2.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            self._dp.shared_memory.unregister(request.name)
        except WorkerError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        return self._pb2.SystemSharedMemoryUnregisterResponse()
