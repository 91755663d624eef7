"""ONNX Runtime, synchronous and nothing else: load, describe, run, warm up.

The batcher calls ``OrtRuntime.run`` from its own thread; nothing here knows
about asyncio. The model is read once, its digest checked, and the session is
built from those same bytes, so the worker runs exactly what it verified.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from inference_worker.config import ConfigError, ModelConfig
from inference_worker.contracts.batch_dimension import batches
from inference_worker.contracts.warmup import WarmupInputs
from inference_worker.errors import InvalidRequest
from inference_worker.tensor_codec import DATATYPES, ONNX_TO_DATATYPE

log = logging.getLogger("inference_worker.runtime")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol describes it (-1: dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of a model, and whether its first dimension batches."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool
    """Every input and output has a dynamic first dimension, and the model's metadata does not say
    it is something else (``contracts.batch_dimension``): requests can be stacked."""


def read_model(path: Path, sha256: str | None) -> bytes:
    """The model file's bytes, refused when ``sha256`` is given and differs."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--model-path: cannot read {str(path)!r}: {exc.strerror}") from None
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ConfigError(
                f"--model-sha256: {path.name} has digest {actual}, expected {sha256}; refusing to serve it"
            )
    return data


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ConfigError(
            f"--model-path: tensor {arg.name!r} has type {arg.type}, which the protocol cannot carry"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, shape)


def _signature(session: ort.InferenceSession) -> ModelSignature:
    inputs = tuple(_spec(arg) for arg in session.get_inputs())
    outputs = tuple(_spec(arg) for arg in session.get_outputs())
    batched = all(spec.shape and spec.shape[0] == -1 for spec in (*inputs, *outputs))
    if batched and not batches(session.get_modelmeta().custom_metadata_map):
        log.info("the model's first dimension is not the batch (its metadata says so): one request a run")
        batched = False
    return ModelSignature(inputs, outputs, batched)


def providers_for(device: str) -> tuple[list[str | tuple[str, dict[str, str]]], int | None]:
    """ONNX Runtime providers for ``--device``, and the CUDA device id when CUDA is used."""
    if device.startswith("cuda:"):
        device_id = int(device.split(":", 1)[1])
        if "CUDAExecutionProvider" in ort.get_available_providers():
            _preload_cuda_libraries()
            return [
                # use_tf32 off: answers as precise as the FP32 the conversion's parity check ran
                # (TF32 matmuls drift by about 1e-3 relative on Ampere and newer).
                ("CUDAExecutionProvider", {"device_id": str(device_id), "use_tf32": "0"}),
                "CPUExecutionProvider",
            ], device_id
        log.warning(
            "--device %s asked for CUDA, but ONNX Runtime has no CUDA provider here: running on the CPU",
            device,
        )
    return ["CPUExecutionProvider"], None


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels when they are installed (a GPU image may carry
    them as Python packages instead of system libraries); the system's own paths are tried next."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload(cuda=True, cudnn=True, msvc=False, directory="")
    except Exception as exc:  # a missing library shows again, with its name, when the session starts
        log.info("CUDA libraries not preloaded from the nvidia wheels (%s); using the system's", exc)


class OrtRuntime:
    """One ONNX Runtime session; ``run`` is called from one thread at a time."""

    def __init__(self, model: bytes, config: ModelConfig) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = config.intra_op_num_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if config.allow_spinning else "0"
        )
        options.log_severity_level = 3
        providers, self.cuda_device = providers_for(config.device)
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types, all "cannot load"
            raise ConfigError(
                f"--model-path: ONNX Runtime cannot load the model: {exc}".splitlines()[0]
            ) from None
        self.signature = _signature(self._session)
        self._output_names = [spec.name for spec in self.signature.outputs]
        self.providers: list[str] = self._session.get_providers()
        if self.cuda_device is not None and "CUDAExecutionProvider" not in self.providers:
            log.warning(
                "--device %s: ONNX Runtime's CUDA provider did not start (CUDA or cuDNN libraries "
                "missing or not matching): running on the CPU",
                config.device,
            )
            self.cuda_device = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in signature order; with CUDA, through I/O binding.

        ONNX Runtime's INVALID_ARGUMENT (an index past a table, a shape the graph cannot take)
        is the input's fault: it leaves as ``InvalidRequest``; any other failure as raised.
        """
        try:
            return self._run(feeds)
        except InvalidArgument as exc:
            raise InvalidRequest(f"the model refused the input: {exc}".splitlines()[0][:1000]) from None

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.cuda_device is None:
            return self._session.run(self._output_names, dict(feeds))  # type: ignore[no-any-return]
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.cuda_device)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()  # type: ignore[no-any-return]

    def warm_up(self, batch_sizes: Sequence[int], inputs: WarmupInputs | None = None) -> None:
        """Run the model once per batch size: on random inputs of the shapes the conversion validated
        (``inputs``), or, without them, on zeros with every dynamic non-batch dimension 1."""
        for size in batch_sizes:
            self.run(example_inputs(self.signature, size, inputs))


def example_inputs(
    signature: ModelSignature, batch_size: int, validated: WarmupInputs | None = None
) -> dict[str, np.ndarray]:
    """Tensors matching the signature with the batch dimension ``batch_size``: random, shaped as
    ``validated`` says (``contracts.warmup``), or zeros with dynamic dimensions 1 without it."""
    feeds: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(batch_size)
    for spec in signature.inputs:
        known = validated.shapes.get(spec.name) if validated is not None else None
        if known is not None and len(known) == len(spec.shape):
            shape = [
                dim if dim >= 0 else (got if got > 0 else 1)
                for dim, got in zip(spec.shape, known, strict=True)
            ]
        else:
            shape = [dim if dim >= 0 else 1 for dim in spec.shape]
        if signature.batched:
            shape[0] = batch_size
        dtype = DATATYPES[spec.datatype].dtype
        if dtype.kind == "O":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        elif validated is None:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        elif dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = rng.integers(0, validated.int_high, size=shape).astype(dtype)
    return feeds
