"""The RPCs of ``inference.GRPCInferenceService``, whatever carries them (``grpc_server``).

Methods take the request message and a call context (``CallContext``: the
client's time left, ``abort``) and return the response, as grpc.aio's
servicers do. Errors abort the RPC with the status of ``errors.GRPC_STATUS``;
inside ``ModelStreamInfer`` they become a response carrying ``error_message``
and the stream goes on (Triton's behaviour). A stream reads ahead (up to
``STREAM_WINDOW`` requests) so its requests batch with each other, and answers
in request order. The client's deadline lowers the request's timeout like the
``timeout`` parameter does, and a request whose client went away leaves the
queue without running. ``infer`` is ``ModelInfer`` for a transport that
answers from a callback: no task per request, as HTTP's routes do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from inference_worker.batcher import Outputs, Pending
from inference_worker.config import Limits
from inference_worker.dataplane import DataPlane, InferRequest
from inference_worker.errors import GRPC_STATUS, InvalidRequest, ModelFailure, RequestTimeout, WorkerError
from inference_worker.shm_api import SharedMemoryServicer, add_grpc_output, grpc_windows
from inference_worker.tensor_codec import decode_grpc_inputs, raw_bytes

log = logging.getLogger("inference_worker.grpc")

SERVICE = "inference.GRPCInferenceService"
STREAM_WINDOW = 256
_Item = tuple[float, "asyncio.Future[Outputs | WorkerError] | WorkerError", "InferRequest | None"]


class CallContext(Protocol):
    """What the RPCs read of their call (a subset of grpc.aio's ``ServicerContext``)."""

    def time_remaining(self) -> float | None: ...

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        """Raises: the call ends with ``code`` and ``details``."""


class InferenceServicer(SharedMemoryServicer):
    """The v2 RPCs, the system shared memory ones included; method names are the protocol's."""

    def __init__(self, dataplane: DataPlane, limits: Limits, pb2: Any) -> None:
        self._dp = dataplane
        self._limits = limits
        self._pb2 = pb2

    async def ServerLive(self, request: Any, context: CallContext) -> Any:
        return self._pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: CallContext) -> Any:
        return self._pb2.ServerReadyResponse(ready=self._dp.ready)

    async def ModelReady(self, request: Any, context: CallContext) -> Any:
        try:
            return self._pb2.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))
        except WorkerError as error:
            await _abort(context, error)

    async def ServerMetadata(self, request: Any, context: CallContext) -> Any:
        return self._pb2.ServerMetadataResponse(**self._dp.server_metadata())

    async def ModelMetadata(self, request: Any, context: CallContext) -> Any:
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

    async def ModelInfer(self, request: Any, context: CallContext) -> Any:
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
        self, request_iterator: AsyncIterator[Any], context: CallContext
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

    def infer(
        self, request: Any, time_remaining: float | None, reply: Callable[[Any], None]
    ) -> Callable[[], None]:
        """``ModelInfer`` from callbacks: ``reply`` gets the response or a ``WorkerError`` (once, unless
        cancelled); the function returned cancels (the client went away)."""
        dp = self._dp
        open_ = [True]

        def done(result: Outputs | WorkerError) -> None:
            if not open_[0]:
                return None
            open_[0] = False
            if not isinstance(result, WorkerError):
                try:
                    response = self._encode(request, infer, result)  # type: ignore[arg-type]
                except Exception:  # a bug: the client still gets an answer, the request its outcome
                    log.exception("encoding a gRPC response failed")
                    result = ModelFailure("internal error; the worker's log has the details")
                else:
                    dp.finish("grpc", "success", started)
                    return reply(response)
            dp.finish("grpc", result.code, started)
            return reply(result)

        def cancel() -> None:
            if open_[0]:
                open_[0] = False
                if isinstance(entry, Pending):
                    dp.cancel(entry)
                dp.finish("grpc", "cancelled", started)

        started, entry, infer = self._submit(request, time_remaining, done)
        if isinstance(entry, WorkerError):
            done(entry)
        return cancel

    def _submit(
        self, request: Any, time_remaining: float | None, done: Callable[[Outputs | WorkerError], None]
    ) -> tuple[float, Pending | WorkerError, InferRequest | None]:
        """Count in flight, decode and submit; ``done`` gets the outcome unless a refusal is returned."""
        started = self._dp.begin()
        try:
            infer = self._decode(request, time_remaining)
            return started, self._dp.submit(infer, done), infer
        except WorkerError as error:
            return started, error, None
        except Exception:  # a bug answers INTERNAL and is accounted for, like HTTP's 500
            log.exception("reading a gRPC inference request failed")
            return started, ModelFailure("internal error; the worker's log has the details"), None

    def _start(self, request: Any, time_remaining: float | None) -> _Item:
        """Decode and submit; the future resolves with the outputs or a WorkerError."""
        future: asyncio.Future[Outputs | WorkerError] = asyncio.get_running_loop().create_future()

        def done(result: Outputs | WorkerError) -> None:
            if not future.done():
                future.set_result(result)

        started, entry, infer = self._submit(request, time_remaining, done)
        if not isinstance(entry, Pending):
            return started, entry, None
        future.add_done_callback(lambda f: self._dp.cancel(entry) if f.cancelled() else None)
        return started, future, infer

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


async def _abort(context: CallContext, error: WorkerError) -> None:
    await context.abort(GRPC_STATUS[error.code], error.message)
