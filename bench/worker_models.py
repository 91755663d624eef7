"""The benchmark's models (exported from PyTorch to ONNX) and their request bodies.

CNN: three 3x3 convolutions (64/128/256 channels, ReLU, 2x2 max-pool after
the first two) on a 3x64x64 input, global average pool, 10 classes: compute
heavy, a 249 KB JSON body. Pool: the CNN's input averaged per channel, then 3 -> 10: the
CNN's transfer with next to no compute (``shm_bench.py``). MLP: 64 -> 256 -> 10: per-request
overhead is everything. Bodies are what clients send: JSON with the data as
``json.dumps(array.tolist())`` writes float32 values (tritonclient does the
same), or the binary tensor extension.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BenchModel:
    """A model file and the bodies of one single-sample request."""

    name: str
    path: Path
    sample_shape: tuple[int, ...]
    json_body: bytes
    binary_body: bytes
    binary_header_length: int
    grpc_message: bytes
    """A serialized ModelInferRequest with raw_input_contents, gRPC-framed."""


def _export(name: str, directory: Path) -> tuple[Path, tuple[int, ...]]:
    import torch  # heavy: only the benchmark's parent process needs it
    from torch import nn

    torch.manual_seed(0)
    if name == "cnn":
        module: nn.Module = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(256, 10),
        )
        shape: tuple[int, ...] = (3, 64, 64)
    elif name == "pool":  # the CNN's input with next to no compute: what moving the tensor costs
        module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
        shape = (3, 64, 64)
    else:
        module = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
        shape = (64,)
    path = directory / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.randn(1, *shape),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path, shape


def grpc_message(name: str, sample: np.ndarray) -> bytes:
    """``sample`` as a gRPC-framed ModelInferRequest for model ``name`` with raw contents."""
    from inference_worker import build_protos

    pb2, _ = build_protos.load()
    request = pb2.ModelInferRequest(model_name=name, raw_input_contents=[sample.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(sample.shape))
    return grpc_framed(request)


def grpc_framed(message: Any) -> bytes:
    """A protobuf message as one gRPC message on the wire (prefix and bytes), as h2load sends it."""
    from inference_worker.grpc_call import MESSAGE_PREFIX

    payload: bytes = message.SerializeToString()
    return MESSAGE_PREFIX.pack(0, len(payload)) + payload


def build(name: str, directory: Path) -> BenchModel:
    """Export the model and prepare its bodies."""
    path, shape = _export(name, directory)
    sample = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    tensor = {"name": "input", "shape": [1, *shape], "datatype": "FP32"}
    json_body = json.dumps({"inputs": [{**tensor, "data": sample.reshape(-1).tolist()}]}).encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": sample.nbytes}}],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return BenchModel(
        name=name,
        path=path,
        sample_shape=shape,
        json_body=json_body,
        binary_body=header + sample.tobytes(),
        binary_header_length=len(header),
        grpc_message=grpc_message(name, sample),
    )
