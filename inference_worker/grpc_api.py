"""gRPC front end: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on grpc.aio.

Runs on the same event loop as HTTP and submits to the same dataplane, so
requests from both protocols batch together. Errors abort the RPC with the
status of ``errors.GRPC_STATUS``; inside ``ModelStreamInfer`` they become a
response carrying ``error_message`` and the stream goes on (Triton's
behaviour). A stream reads ahead (up to ``STREAM_WINDOW`` requests) so its
requests batch with each other, and answers in request order. The client's
deadline lowers the request's timeout like the ``timeout`` parameter does,
and a request whose client went away leaves the queue without running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from inference_worker import build_protos
from inference_worker.batcher import Outputs
from inference_worker.config import Limits
from inference_worker.dataplane import DataPlane, InferRequest
from inference_worker.errors import GRPC_STATUS, InvalidRequest, ModelFailure, RequestTimeout, WorkerError
from inference_worker.shm_api import SharedMemoryServicer, add_grpc_output, grpc_windows
from inference_worker.tensor_codec import decode_grpc_inputs, raw_bytes

log = logging.getLogger("inference_worker.grpc")

SERVICE = "inference.GRPCInferenceService"
STREAM_WINDOW = 256
_Item = tuple[float, "asyncio.Future[Outputs | WorkerError] | WorkerError", "InferRequest | None"]


class InferenceServicer(SharedMemoryServicer):
    """The v2 RPCs, the system shared memory ones included; method names are the protocol's."""

    def __init__(self, dataplane: DataPlane, limits: Limits, pb2: Any) -> None:
        self._dp = dataplane
        self._limits = limits
        self._pb2 = pb2

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self._pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self._pb2.ServerReadyResponse(ready=self._dp.ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return self._pb2.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))
        except WorkerError as error:
            await _abort(context, error)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self._pb2.ServerMetadataResponse(**self._dp.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            metadata = self._dp.model_metadata(request.name, request.version)
        except WorkerError as error:
            await _abort(context, error)
        tensor = self._pb2.ModelMetadataResponse.TensorMetadata
        return self._pb2.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**item) for item in metadata["inputs"]],  # type: ignore[attr-defined]
            outputs=[tensor(**item) for item in metadata["outputs"]],  # type: ignore[attr-defined]
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started, pending, infer = self._start(request, context.time_remaining())
        try:
            result = pending if isinstance(pending, WorkerError) else await pending
        except asyncio.CancelledError:
            self._dp.finish("grpc", "cancelled", started)
            raise
        if not isinstance(result, WorkerError):
            result = self._encode(request, infer, result)  # type: ignore[arg-type]
        if isinstance(result, WorkerError):
            self._dp.finish("grpc", result.code, started)
            await _abort(context, result)
        self._dp.finish("grpc", "success", started)
        return result

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        window: asyncio.Queue[tuple[Any, _Item] | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    item = self._start(request, None)
                    try:
                        await window.put((request, item))
                    except asyncio.CancelledError:
                        self._abandon(item)
                        raise
            except grpc.RpcError as exc:  # the client's side broke off: answer what was read, then end
                log.info("a ModelStreamInfer stream ended early: %s", exc.code())
            except Exception:  # never leave the answering side waiting for an end that does not come
                log.exception("reading a ModelStreamInfer stream failed")
            await window.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (entry := await window.get()) is not None:
                yield await self._stream_answer(*entry)
        finally:
            reader.cancel()
            while not window.empty():  # the client left: what it sent and never read is cancelled
                if (entry := window.get_nowait()) is not None:
                    self._abandon(entry[1])

    async def _stream_answer(self, request: Any, item: _Item) -> Any:
        started, pending, infer = item
        try:
            result = pending if isinstance(pending, WorkerError) else await pending
        except asyncio.CancelledError:
            self._dp.finish("grpc", "cancelled", started)
            raise
        if not isinstance(result, WorkerError):
            result = self._encode(request, infer, result)  # type: ignore[arg-type]
        if isinstance(result, WorkerError):
            self._dp.finish("grpc", result.code, started)
            return self._pb2.ModelStreamInferResponse(error_message=result.message)
        self._dp.finish("grpc", "success", started)
        return self._pb2.ModelStreamInferResponse(infer_response=result)

    def _abandon(self, item: _Item) -> None:
        started, pending, _ = item
        if isinstance(pending, asyncio.Future):
            pending.cancel()  # leaves the queue if it has not run
        self._dp.finish("grpc", "cancelled", started)

    def _start(self, request: Any, time_remaining: float | None) -> _Item:
        """Decode and submit; the future resolves with the outputs or a WorkerError."""
        started = self._dp.begin()
        try:
            infer = self._decode(request, time_remaining)
            future: asyncio.Future[Outputs | WorkerError] = asyncio.get_running_loop().create_future()

            def done(result: Outputs | WorkerError) -> None:
                if not future.done():
                    future.set_result(result)

            entry = self._dp.submit(infer, done)
            future.add_done_callback(lambda f: self._dp.cancel(entry) if f.cancelled() else None)
            return started, future, infer
        except WorkerError as error:
            return started, error, None
        except Exception:  # a bug answers INTERNAL and is accounted for, like HTTP's 500
            log.exception("reading a gRPC inference request failed")
            return started, ModelFailure("internal error; the worker's log has the details"), None

    def _decode(self, request: Any, time_remaining: float | None) -> InferRequest:
        self._dp.check_model(request.model_name, request.model_version)
        if len(request.id) > self._limits.max_name_length:
            raise InvalidRequest("'id' must be at most 256 characters")
        if len(request.parameters) > self._limits.max_parameters:
            raise InvalidRequest(f"at most {self._limits.max_parameters} request parameters are allowed")
        timeout_us = None
        if "timeout" in request.parameters:
            parameter = request.parameters["timeout"]
            if parameter.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
                raise InvalidRequest("the 'timeout' parameter must be an integer (microseconds)")
            timeout_us = max(0, parameter.int64_param or parameter.uint64_param)
        if time_remaining is not None:
            if time_remaining <= 0:
                raise RequestTimeout("the client's deadline passed before the request was queued")
            deadline_us = int(time_remaining * 1e6)
            timeout_us = deadline_us if timeout_us is None else min(timeout_us, deadline_us)
        self._dp.check_input_count(len(request.inputs))
        shm = self._dp.shared_memory
        inputs = decode_grpc_inputs(
            request.inputs, request.raw_input_contents, self._limits, self._dp.input_datatypes, shm.grpc_input
        )
        outputs = tuple(output.name for output in request.outputs) or None
        return InferRequest(
            request.model_name,
            request.model_version,
            inputs,
            outputs,
            request.id,
            timeout_us,
            grpc_windows(shm, request.outputs) if outputs else None,
        )

    def _encode(self, request: Any, infer: InferRequest, outputs: Outputs) -> Any:
        """The response; a ``WorkerError`` (returned, not raised) when a shared memory region cannot
        take an output."""
        try:
            return self._response(request, infer, outputs)
        except WorkerError as error:
            return error

    def _response(self, request: Any, infer: InferRequest, outputs: Outputs) -> Any:
        signature = self._dp.signature
        assert signature is not None  # noqa: S101 - only called with results of the model
        response = self._pb2.ModelInferResponse(
            model_name=self._dp.model_name, model_version=self._dp.model_version, id=request.id
        )
        names = infer.outputs or tuple(spec.name for spec in signature.outputs)
        shared = infer.shared_outputs
        for name in names:
            index = self._dp.output_index(name)
            array = outputs[index]
            if shared is not None and name in shared:
                datatype = signature.outputs[index].datatype
                add_grpc_output(self._dp.shared_memory, response, shared[name], name, datatype, array)
                continue
            response.outputs.add(name=name, datatype=signature.outputs[index].datatype, shape=array.shape)
            response.raw_output_contents.append(raw_bytes(array))
        return response


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: WorkerError) -> None:
    await context.abort(GRPC_STATUS[error.code], error.message)


class GrpcServer:
    """The grpc.aio server with both services, and its health states."""

    def __init__(self, dataplane: DataPlane, limits: Limits) -> None:
        pb2, pb2_grpc = build_protos.load()
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limits.max_grpc_message_bytes),
                ("grpc.max_send_message_length", limits.max_grpc_message_bytes),
                ("grpc.max_metadata_size", limits.max_header_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(dataplane, limits, pb2), self._server
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)

    async def start(self, host: str, port: int) -> int:
        """Listen and serve; returns the bound port. Health starts NOT_SERVING."""
        await self.set_serving(False)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = int(self._server.add_insecure_port(address))
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await self._server.start()
        return bound

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def drain(self) -> None:
        """Health turns NOT_SERVING for good (watchers are told at once)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)
