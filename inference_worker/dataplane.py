"""The transport-neutral core of the worker: state, metadata, validation, admission.

``http_api`` and ``grpc_api`` decode their wire formats into an
``InferRequest`` and call ``DataPlane.submit``, as MLServer's
``handlers/dataplane.py`` serves both its REST and gRPC front ends. The
dataplane checks the request against the model's signature (names,
datatypes, shapes, batch size), turns the protocol's ``timeout`` into a
deadline (a request may lower the server's timeout, never raise it) and
hands it to the batcher. Results come back through the ``done`` callback on
the event loop thread: a list of outputs in signature order, or a
``WorkerError``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inference_worker import __version__, classification
from inference_worker.batcher import Batcher, Done, Pending
from inference_worker.config import DynamicBatching
from inference_worker.contracts import report
from inference_worker.contracts.labels import ClassLabels
from inference_worker.errors import InvalidRequest, ModelNotFound, Unavailable
from inference_worker.metrics import WorkerMetrics
from inference_worker.runtime import ModelSignature, TensorSpec
from inference_worker.shm import EXTENSION as SHARED_MEMORY
from inference_worker.shm import SharedMemory, Window
from inference_worker.tensor_codec import DATATYPES

logger = logging.getLogger(__name__)

EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_stream_infer",
    "kserve_v1_predict",
    "health_grpc",
)


class State(enum.Enum):
    """Lifecycle of the worker; only READY takes inference."""

    LOADING = report.LOADING
    READY = report.READY
    DRAINING = report.DRAINING
    FAILED = report.FAILED


@dataclass(slots=True)
class InferRequest:
    """One inference, whatever protocol it came in."""

    model_name: str
    model_version: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None
    """Names of the outputs asked for; None asks for all of them."""
    id: str = ""
    timeout_us: int | None = None
    """The protocol's ``timeout`` parameter (microseconds); may only lower the server's."""
    shared_outputs: dict[str, Window] | None = None
    """Requested outputs to write into shared memory regions (``shm``), by name."""
    classes: dict[str, int] | None = None
    """Requested outputs answered as their top classes (``classification``), by name: how many."""


class DataPlane:
    """What both protocols serve: one model, one batcher, one set of metrics."""

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        batching: DynamicBatching,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.monotonic,
        shared_memory: SharedMemory | None = None,
        class_labels: ClassLabels | None = None,
    ) -> None:
        self.model_name = model_name
        self.class_labels = class_labels or ClassLabels()
        self.model_version = model_version
        self.metrics = metrics
        self.shared_memory = shared_memory or SharedMemory()
        """The system shared memory regions clients registered (off unless the option turns it on)."""
        self.state = State.LOADING
        self.leaving = False
        """SIGTERM came but the drain has not begun (``--shutdown-delay-s``): inference is still
        served, readiness says no and reports say ``draining``, so balancers take the worker out."""
        self.in_flight = 0
        self._batching = batching
        self._clock = clock
        self._timeout_s = batching.default_timeout_microseconds / 1e6
        self._batcher: Batcher | None = None
        self._signature: ModelSignature | None = None
        self._idle = asyncio.Event()
        self._output_index: dict[str, int] = {}
        self._input_datatypes: dict[str, str] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def attach(self, signature: ModelSignature, batcher: Batcher) -> None:
        """The model is loaded and warmed up: start taking inference."""
        self._signature = signature
        self._batcher = batcher
        self._output_index = {spec.name: index for index, spec in enumerate(signature.outputs)}
        self._input_datatypes = {spec.name: spec.datatype for spec in signature.inputs}
        self._dims = [
            (spec.name, len(spec.shape), spec.shape, DATATYPES[spec.datatype]) for spec in signature.inputs
        ]
        self._dynamic_tail = any(-1 in spec.shape[1:] for spec in signature.inputs)
        self._names = frozenset(spec.name for spec in signature.inputs)
        self._fits: list[set[tuple[int, ...]]] = [set() for _ in signature.inputs]
        """Shapes each input was checked to take (a few hundred at most): seen again, not checked again."""
        if unknown := sorted(set(self.class_labels.outputs) - set(self._output_index)):
            logger.warning("--class-labels names outputs the model does not have: %s", ", ".join(unknown))
        if self.state is State.LOADING:
            self.state = State.READY

    def begin_drain(self) -> None:
        """Take no new inference; in-flight requests finish."""
        self.state = State.DRAINING
        if self.in_flight == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Returns once draining and no request is in flight."""
        await self._idle.wait()

    @property
    def ready(self) -> bool:
        return self.state is State.READY and not self.leaving

    @property
    def reported_state(self) -> str:
        """The state reports carry: ``draining`` from the moment the worker was told to stop."""
        return State.DRAINING.value if self.leaving else self.state.value

    @property
    def signature(self) -> ModelSignature | None:
        return self._signature

    @property
    def input_datatypes(self) -> dict[str, str] | None:
        """The model's datatype of each input (None while loading): decoders check it first."""
        return self._input_datatypes

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth if self._batcher is not None else 0

    @property
    def running_batches(self) -> int:
        """Batches the model runs now (at most one per instance)."""
        return self._batcher.busy_runners if self._batcher is not None else 0

    # -- metadata --------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, object]:
        extensions = [*EXTENSIONS, SHARED_MEMORY] if self.shared_memory.enabled else list(EXTENSIONS)
        return {"name": "kiln-inference-worker", "version": __version__, "extensions": extensions}

    def check_model(self, name: str, version: str) -> None:
        """Refuse a model name or version this worker does not serve."""
        if name != self.model_name:
            raise ModelNotFound(f"unknown model '{name}'; this worker serves '{self.model_name}'")
        if version and version != self.model_version:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; it serves version '{self.model_version}'"
            )

    def model_ready(self, name: str, version: str) -> bool:
        self.check_model(name, version)
        return self.ready

    def model_metadata(self, name: str, version: str) -> dict[str, object]:
        self.check_model(name, version)
        if self._signature is None:
            raise Unavailable(f"model '{name}' is still loading")
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor_metadata(spec) for spec in self._signature.inputs],
            "outputs": [_tensor_metadata(spec) for spec in self._signature.outputs],
        }

    def check_input_count(self, count: int) -> None:
        """Refuse more tensors than the model takes before decoding any of them."""
        if self._signature is not None and count > len(self._signature.inputs):
            raise InvalidRequest(
                f"the request has {count} inputs; the model takes {len(self._signature.inputs)}"
            )

    def classify(self, name: str, array: np.ndarray, count: int) -> np.ndarray:
        """Output ``name`` as its top ``count`` classes, labelled where the version has labels: of
        each row (``[batch, count]``), or of the whole tensor (``[count]``) for a model without a
        batch dimension."""
        batched = self._signature is None or self._signature.batched
        return classification.classify(array, count, self.class_labels.of(name), batched=batched)

    def output_index(self, name: str) -> int:
        """Position of an output in signature order, or a 400 naming it."""
        index = self._output_index.get(name)
        if index is None:
            raise InvalidRequest(
                f"unknown output '{name}'; the model returns {', '.join(self._output_index)}"
            )
        return index

    # -- inference ---------------------------------------------------------------------------
    def submit(self, request: InferRequest, done: Done) -> Pending:
        """Validate and queue; raises ``WorkerError`` at once or calls ``done`` later."""
        if self.state is not State.READY or self._batcher is None:
            raise Unavailable(
                "the worker is draining" if self.state is State.DRAINING else "the model is still loading"
            )
        self.check_model(request.model_name, request.model_version)
        rows, key = self._check_inputs(request.inputs)
        if request.outputs is not None:
            for name in request.outputs:
                self.output_index(name)
        timeout_s = self._timeout_s
        if request.timeout_us is not None and 0 < request.timeout_us / 1e6 < timeout_s:
            timeout_s = request.timeout_us / 1e6
        entry = Pending(request.inputs, rows=rows, key=key, deadline=self._clock() + timeout_s, done=done)
        self._batcher.submit(entry)
        return entry

    def cancel(self, entry: Pending) -> None:
        """The client gave up: drop the request if it has not run yet."""
        if self._batcher is not None:
            self._batcher.cancel(entry)

    def begin(self) -> float:
        """An inference request was read: count it in flight; returns its start time."""
        self.in_flight += 1
        return time.perf_counter()

    def finish(self, protocol: str, outcome: str, started: float) -> None:
        """The request's answer is ready (any outcome)."""
        self.in_flight -= 1
        self.metrics.on_request(protocol, outcome, time.perf_counter() - started)
        if self.in_flight == 0 and self.state is State.DRAINING:
            self._idle.set()

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> tuple[int, object]:
        if inputs.keys() != self._names:
            self._name_error(inputs)
        rows = -1
        for (name, rank, shape, dt), fits in zip(self._dims, self._fits, strict=True):
            array = inputs[name]
            if array.dtype != dt.dtype:
                got = next((d.name for d in DATATYPES.values() if d.dtype == array.dtype), str(array.dtype))
                raise InvalidRequest(f"input '{name}' has datatype {got}; the model takes {dt.name}")
            if array.shape not in fits:
                if array.ndim != rank or any(
                    want not in (-1, got) for want, got in zip(shape, array.shape, strict=True)
                ):
                    raise InvalidRequest(
                        f"input '{name}' has shape {list(array.shape)}; the model takes {list(shape)}"
                    )
                if len(fits) < 256:
                    fits.add(array.shape)
            if rows == -1:
                rows = array.shape[0] if rank else 1
            elif rank and array.shape[0] != rows:
                raise InvalidRequest(f"input '{name}' has {array.shape[0]} rows, the first input has {rows}")
        if self._signature is not None and self._signature.batched:
            if rows == 0:
                raise InvalidRequest("the request has a batch of 0 rows")
            if rows > self._batching.max_batch_size:
                raise InvalidRequest(
                    f"batch of {rows} rows exceeds the max batch size {self._batching.max_batch_size}"
                )
        else:
            rows = 1
        key = tuple(inputs[name].shape[1:] for name, *_ in self._dims) if self._dynamic_tail else None
        return rows, key

    def _name_error(self, inputs: dict[str, np.ndarray]) -> None:
        expected = [name for name, *_ in self._dims]
        for name in inputs:
            if name not in expected:
                raise InvalidRequest(f"unknown input '{name}'; the model takes {', '.join(expected)}")
        missing = [name for name in expected if name not in inputs]
        raise InvalidRequest(
            f"missing input {', '.join(repr(n) for n in missing)}; the model takes {', '.join(expected)}"
        )


def _tensor_metadata(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
