"""The RPCs of ``inference.GRPCInferenceService``, whatever carries them (``grpc_server``).

Methods take the request message and a call context (``CallContext``: the
client's time left, ``abort``) and return the response, as grpc.aio's
servicers do. Errors abort the RPC with the status of ``errors.GRPC_STATUS``;
inside ``ModelStreamInfer`` they become a response carrying ``error_message``
and the request's id, and the stream goes on (Triton's behaviour). A stream reads ahead (up to
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

from inference_worker import classification
from inference_worker.batcher import Outputs, Pending
from inference_worker.config import Limits
from inference_worker.contracts.report import SUCCESS
from inference_worker.dataplane import DataPlane, InferRequest
from inference_worker.errors import GRPC_STATUS, InvalidRequest, ModelFailure, RequestTimeout, WorkerError
from inference_worker.pb_wire import InferResponseEncoder, stream_error, stream_response
from inference_worker.runtime import ModelSignature
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


class Answerable(CallContext, Protocol):
    """A call answered from callbacks (``infer``)."""

    def reply(self, result: Any) -> None:
        """The serialized response, or a ``WorkerError``."""


class InferenceServicer(SharedMemoryServicer):
    """The v2 RPCs, the system shared memory ones included; method names are the protocol's."""

    def __init__(self, dataplane: DataPlane, limits: Limits, pb2: Any) -> None:
        self._dp = dataplane
        self._limits = limits
        self._pb2 = pb2
        self._encoder: tuple[ModelSignature, InferResponseEncoder] | None = None

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

    async def ModelInfer(self, request: Any, context: CallContext) -> bytes:
        """The serialized response (``infer`` is the same RPC from callbacks)."""
        result = await self._outcome(self._start(request, context.time_remaining()))
        if isinstance(result, WorkerError):
            await _abort(context, result)
        return result  # type: ignore[return-value]

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: CallContext
    ) -> AsyncIterator[bytes]:
        window: asyncio.Queue[tuple[_Item, str] | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    item = self._start(request, None)
                    try:  # the id goes along: a failed request answers with it, as in Triton
                        await window.put((item, request.id))
                    except asyncio.CancelledError:
                        self._abandon(item)
                        raise
            except Exception:  # never leave the answering side waiting for an end that does not come
                log.exception("reading a ModelStreamInfer stream failed")
            await window.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (entry := await window.get()) is not None:
                result = await self._outcome(entry[0])
                yield (
                    stream_error(result.message, entry[1])
                    if isinstance(result, WorkerError)
                    else stream_response(result)
                )
        finally:
            reader.cancel()
            while not window.empty():  # the client left: what it sent and never read is cancelled
                if (entry := window.get_nowait()) is not None:
                    self._abandon(entry[0])

    async def _outcome(self, item: _Item) -> bytes | WorkerError:
        """The serialized response of a submitted request, or its error; counted as finished."""
        started, pending, infer = item
        try:
            outputs = pending if isinstance(pending, WorkerError) else await pending
        except asyncio.CancelledError:
            self._dp.finish("grpc", "cancelled", started)
            raise
        result = outputs if isinstance(outputs, WorkerError) else self._encode(infer, outputs)  # type: ignore[arg-type]
        self._dp.finish("grpc", result.code if isinstance(result, WorkerError) else SUCCESS, started)
        return result

    def _abandon(self, item: _Item) -> None:
        started, pending, _ = item
        if isinstance(pending, asyncio.Future):
            pending.cancel()  # leaves the queue if it has not run
        self._dp.finish("grpc", "cancelled", started)

    def infer(self, request: Any, call: Answerable) -> Callable[[], None] | None:
        """``ModelInfer`` from callbacks: ``call.reply`` gets the serialized response or a
        ``WorkerError`` (once, unless cancelled); the function returned cancels (the client went
        away), None when the answer was given at once."""
        answer = _Answer(self, self._dp.begin(), call.reply)
        answer.infer, entry = self._submit(request, call.time_remaining(), answer.done)
        if isinstance(entry, WorkerError):
            answer.done(entry)
            return None
        answer.entry = entry
        return answer.cancel

    def _submit(
        self, request: Any, time_remaining: float | None, done: Callable[[Outputs | WorkerError], None]
    ) -> tuple[InferRequest | None, Pending | WorkerError]:
        """Decode and submit; ``done`` gets the outcome unless a refusal is returned."""
        try:
            infer = self._decode(request, time_remaining)
            return infer, self._dp.submit(infer, done)
        except WorkerError as error:
            return None, error
        except Exception:  # a bug answers INTERNAL and is accounted for, like HTTP's 500
            log.exception("reading a gRPC inference request failed")
            return None, ModelFailure("internal error; the worker's log has the details")

    def _start(self, request: Any, time_remaining: float | None) -> _Item:
        """Decode and submit; the future resolves with the outputs or a WorkerError."""
        future: asyncio.Future[Outputs | WorkerError] = asyncio.get_running_loop().create_future()

        def done(result: Outputs | WorkerError) -> None:
            if not future.done():
                future.set_result(result)

        started = self._dp.begin()
        infer, entry = self._submit(request, time_remaining, done)
        if not isinstance(entry, Pending):
            return started, entry, None
        future.add_done_callback(lambda f: self._dp.cancel(entry) if f.cancelled() else None)
        return started, future, infer

    def _decode(self, request: Any, time_remaining: float | None) -> InferRequest:
        self._dp.check_model(request.model_name, request.model_version)
        if len(request.id) > self._limits.max_name_length:
            raise InvalidRequest("'id' must be at most 256 characters")
        parameters = request.parameters
        if parameters and len(parameters) > self._limits.max_parameters:
            raise InvalidRequest(f"at most {self._limits.max_parameters} request parameters are allowed")
        timeout_us = None
        if parameters and "timeout" in parameters:
            parameter = parameters["timeout"]
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
        requested = request.outputs
        outputs = tuple(output.name for output in requested) if requested else None
        return InferRequest(
            request.model_name,
            request.model_version,
            inputs,
            outputs,
            request.id,
            timeout_us,
            grpc_windows(shm, requested) if outputs else None,
            self._classes(requested) if outputs else None,
        )

    def _classes(self, requested: Any) -> dict[str, int] | None:
        """The requested outputs asked for as their top classes, and how many (None when none is)."""
        found: dict[str, int] | None = None
        for output in requested:
            if classification.PARAMETER in output.parameters:
                signature = self._dp.signature
                assert signature is not None  # noqa: S101 - check_model passed
                datatype = signature.outputs[self._dp.output_index(output.name)].datatype
                value = classification.grpc_value(output.parameters[classification.PARAMETER])
                found = found or {}
                found[output.name] = classification.class_count(value, datatype, output.name)
        return found

    def _encode(self, infer: InferRequest, outputs: Outputs) -> bytes | WorkerError:
        """The serialized response; a ``WorkerError`` (returned, not raised) when a shared memory
        region cannot take an output."""
        try:
            return self._response(infer, outputs)
        except WorkerError as error:
            return error

    def _response(self, infer: InferRequest, outputs: Outputs) -> bytes:
        signature = self._dp.signature
        assert signature is not None  # noqa: S101 - only called with results of the model
        if infer.outputs is None:
            indices: Any = range(len(signature.outputs))
        else:
            indices = [self._dp.output_index(name) for name in infer.outputs]
        if infer.shared_outputs is not None or infer.classes is not None:
            return self._shaped_response(infer, outputs, signature, indices)
        encoder = self._encoder
        if encoder is None or encoder[0] is not signature:
            specs = [(spec.name, spec.datatype) for spec in signature.outputs]
            encoder = self._encoder = (
                signature,
                InferResponseEncoder(self._dp.model_name, self._dp.model_version, specs),
            )
        return encoder[1].encode(infer.id, [(i, outputs[i], raw_bytes(outputs[i])) for i in indices])

    def _shaped_response(
        self, infer: InferRequest, outputs: Outputs, signature: ModelSignature, indices: Any
    ) -> bytes:
        """A response with outputs written to shared memory (they carry parameters, no data) or
        answered as their top classes (BYTES)."""
        response = self._pb2.ModelInferResponse(
            model_name=self._dp.model_name, model_version=self._dp.model_version, id=infer.id
        )
        shared, classes = infer.shared_outputs or {}, infer.classes or {}
        for index in indices:
            spec = signature.outputs[index]
            array, datatype = outputs[index], spec.datatype
            if spec.name in classes:
                array, datatype = self._dp.classify(spec.name, array, classes[spec.name]), "BYTES"
            if spec.name in shared:
                add_grpc_output(
                    self._dp.shared_memory, response, shared[spec.name], spec.name, datatype, array
                )
                continue
            response.outputs.add(name=spec.name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(raw_bytes(array))
        data: bytes = response.SerializeToString()
        return data


class _Answer:
    """One ``ModelInfer`` answered from the batcher's callback: its outcome is given once."""

    __slots__ = ("entry", "infer", "open", "reply", "servicer", "started")

    def __init__(self, servicer: InferenceServicer, started: float, reply: Callable[[Any], None]) -> None:
        self.servicer = servicer
        self.infer: InferRequest | None = None
        self.started = started
        self.reply = reply
        self.entry: Pending | None = None
        self.open = True

    def done(self, result: Outputs | WorkerError) -> None:
        if not self.open:
            return None
        self.open = False
        servicer, dp = self.servicer, self.servicer._dp
        if not isinstance(result, WorkerError):
            try:
                response = servicer._encode(self.infer, result)  # type: ignore[arg-type]
            except Exception:  # a bug: the client still gets an answer, the request its outcome
                log.exception("encoding a gRPC response failed")
                response = ModelFailure("internal error; the worker's log has the details")
            if not isinstance(response, WorkerError):
                dp.finish("grpc", SUCCESS, self.started)
                return self.reply(response)
            result = response
        dp.finish("grpc", result.code, self.started)
        return self.reply(result)

    def cancel(self) -> None:
        if self.open:
            self.open = False
            dp = self.servicer._dp
            if self.entry is not None:
                dp.cancel(self.entry)
            dp.finish("grpc", "cancelled", self.started)


async def _abort(context: CallContext, error: WorkerError) -> None:
    await context.abort(GRPC_STATUS[error.code], error.message)
