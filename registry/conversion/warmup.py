"""The worker's warm-up, run at conversion time on the shapes parity validated.

A worker warms up before it serves; a model it cannot warm up crash-loops on every start. The
conversion therefore records the input shapes it validated (``contracts.warmup``: dynamic
dimensions as parity drew them, the batch as -1), which every worker of the version warms up
with, and runs the worker's own warm-up (``inference_worker.runtime``) on them now, so such a
model fails its conversion with the reason (``warmup_failed``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference_worker.config import ModelConfig
from inference_worker.contracts.warmup import REPORT_KEY, WarmupInputs, encode_warmup
from inference_worker.runtime import OrtRuntime
from registry.conversion.channel import ChildError, progress
from registry.conversion.onnx_export import first_line
from registry.conversion.parity import TensorSpec, concrete_shape


def validated_inputs(inputs: Sequence[TensorSpec], *, int_high: int) -> WarmupInputs:
    """The shapes parity drew (the batch dimension as -1 when dynamic) and its integer range."""
    shapes = {}
    for spec in inputs:
        shape = concrete_shape(spec, 1)
        shapes[spec.name] = (-1, *shape[1:]) if spec.shape and spec.shape[0] == -1 else shape
    return WarmupInputs(shapes=shapes, int_high=int_high)


def check_warm_up(
    onnx_path: str, inputs: Sequence[TensorSpec], *, int_high: int, batch_sizes: Sequence[int]
) -> dict[str, Any]:
    """The report's warm-up entry, once the worker's warm-up ran on it; ``ChildError`` when it fails."""
    warmup = validated_inputs(inputs, int_high=int_high)
    progress("warming up as a worker would")
    try:
        runtime = OrtRuntime(
            Path(onnx_path).read_bytes(), ModelConfig(name="conversion", path=Path(onnx_path))
        )
        sizes = sorted({1, *batch_sizes}) if runtime.signature.batched else [1]
        runtime.warm_up(sizes, warmup)
    except Exception as exc:  # ONNX Runtime's own errors and the worker's ConfigError alike
        raise ChildError(
            f"the worker's warm-up fails on the inputs parity validated ({encode_warmup(warmup)}): "
            f"{first_line(exc)}",
            "warmup_failed",
        ) from None
    return {REPORT_KEY: encode_warmup(warmup)}
