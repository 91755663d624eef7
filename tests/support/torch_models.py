"""Tiny models saved in every format the registry accepts, each returning its signature dict.

Built in a few lines of torch at test time (no downloads). Shared by the conversion
tests and the Celery integration tests.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from registry.conversion.inspection import inspect_onnx, inspect_torch_export

IMAGE_SHAPE = (3, 16, 16)


def _save_scripted(module: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit.script is deprecated in favour of torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))


class SmallCNN(nn.Module):
    """Conv, batch norm, ReLU, global average pooling, linear: float accumulation everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.conv(image)))
        logits: torch.Tensor = self.head(features.mean(dim=(2, 3)))
        return logits


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN()
    assert model.norm.running_mean is not None
    assert model.norm.running_var is not None
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _image_signature(name: str = "image") -> dict[str, Any]:
    return {"inputs": [{"name": name, "dtype": "float32", "shape": [-1, *IMAGE_SHAPE]}], "outputs": []}


def save_torchscript_cnn(path: Path, *, seed: int = 0) -> dict[str, Any]:
    """A scripted CNN taking ``image`` [-1, 3, 16, 16] float32; outputs left for conversion."""
    _save_scripted(_cnn(seed), path)
    return _image_signature()


class TwoInputs(nn.Module):
    """Embedding lookup of int64 ``tokens`` plus a dense layer over float ``features``."""

    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 8)
        self.dense = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.head(self.embed(tokens).mean(dim=1) + torch.tanh(self.dense(features)))
        return scores


def save_two_input_torchscript(path: Path, *, vocabulary: int = 100) -> dict[str, Any]:
    """``tokens`` int64 [-1, 6] (indices below ``vocabulary``), ``features`` float32 [-1, 4] -> ``scores``."""
    torch.manual_seed(0)
    _save_scripted(TwoInputs(vocabulary).eval(), path)
    return {
        "inputs": [
            {"name": "tokens", "dtype": "int64", "shape": [-1, 6]},
            {"name": "features", "dtype": "float32", "shape": [-1, 4]},
        ],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, 3]}],
    }


def save_pt2_cnn(path: Path, *, dynamic_batch: bool = True) -> dict[str, Any]:
    """The CNN as a ``torch.export`` program, with a dynamic batch dimension unless told otherwise."""
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(_cnn(), (torch.randn(2, *IMAGE_SHAPE),), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, str(path))
    signature: dict[str, Any] = inspect_torch_export(str(path))["signature"]
    return signature


def save_onnx_cnn(path: Path, *, seed: int = 0) -> dict[str, Any]:
    """The CNN exported to ONNX by the test itself (an "upload"), dynamic batch axis."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _cnn(seed),
            (torch.randn(2, *IMAGE_SHAPE),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    signature: dict[str, Any] = inspect_onnx(str(path))["signature"]
    return signature


def save_onnx_as_exported_by_default(path: Path, *, seed: int = 0) -> Path:
    """The CNN as ``torch.onnx.export(model, (example,), path)`` writes it with every default: the
    dynamo exporter, batch 1 fixed, the weights in ``<path>.data`` beside the graph. Returns that
    data file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _cnn(seed),
            (torch.randn(1, *IMAGE_SHAPE),),
            str(path),
            input_names=["image"],
            output_names=["logits"],
        )
    data = path.with_name(path.name + ".data")
    assert data.is_file(), "torch.onnx.export no longer writes external data by default"
    return data


class Spectrum(nn.Module):
    """Magnitudes of a real FFT: ``aten::fft_rfft`` has no TorchScript-exporter symbolic."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(9, 2)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.fft.rfft(signal).abs())
        return out


UNEXPORTABLE_OPERATOR = "aten::fft_rfft"


def save_unexportable_torchscript(path: Path) -> dict[str, Any]:
    """A TorchScript model whose export fails on ``UNEXPORTABLE_OPERATOR``."""
    _save_scripted(Spectrum().eval(), path)
    return {"inputs": [{"name": "signal", "dtype": "float32", "shape": [-1, 16]}], "outputs": []}


def save_onnx_with_contrib_op(path: Path) -> dict[str, Any]:
    """An ONNX graph using ONNX Runtime's ``com.microsoft::Gelu``, which onnx.reference cannot run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(helper.make_graph([node], "contrib", [x], [y]), opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    signature: dict[str, Any] = inspect_onnx(str(path))["signature"]
    return signature


class Inverse(nn.Module):
    """``torch.linalg.inv``: the torch.export-based exporter has no ONNX function for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inverse: torch.Tensor = torch.linalg.inv(x)
        return inverse


UNEXPORTABLE_PT2_OPERATOR = "aten.linalg_inv_ex"


def save_unexportable_pt2(path: Path) -> dict[str, Any]:
    """A ``.pt2`` program whose export fails on ``UNEXPORTABLE_PT2_OPERATOR``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(Inverse(), (torch.eye(3).expand(2, 3, 3).contiguous(),))
        torch.export.save(program, str(path))
    signature: dict[str, Any] = inspect_torch_export(str(path))["signature"]
    return signature


class Noisy(nn.Module):
    """Adds fresh Gaussian noise: exports fine, but no two runtimes draw the same noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def save_noisy_torchscript(path: Path) -> dict[str, Any]:
    """A model whose ONNX export legitimately differs from PyTorch (random numbers in the graph)."""
    _save_scripted(Noisy().eval(), path)
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 32]}], "outputs": []}


class Spin(nn.Module):
    """Never returns: the loop condition stays true."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while bool(x.sum() < float("inf")):
            x = x * 1.0
        return x


def save_hanging_torchscript(path: Path) -> dict[str, Any]:
    """A model that hangs as soon as PyTorch runs it."""
    _save_scripted(Spin().eval(), path)
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}], "outputs": []}


class Hog(nn.Module):
    """Allocates 8 GiB per sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum() + torch.ones(x.shape[0], 1 << 31).sum()


def save_memory_hog_torchscript(path: Path) -> dict[str, Any]:
    """A model that allocates far more memory than any conversion limit."""
    _save_scripted(Hog().eval(), path)
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}], "outputs": []}


class UnpaddedConv(nn.Module):
    """A 3x3 convolution without padding over a dynamic height and width: needs inputs of at least 3x3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.conv(image).mean(dim=(2, 3))
        return scores


def save_unpadded_conv(path: Path) -> dict[str, Any]:
    """``image`` float32 [-1, 3, -1, -1] -> ``scores`` [-1, 4]; a 1x1 image cannot run."""
    torch.manual_seed(0)
    _save_scripted(UnpaddedConv().eval(), path)
    return {"inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 3, -1, -1]}], "outputs": []}
