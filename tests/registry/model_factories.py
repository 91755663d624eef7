"""Small models made in code, saved in each accepted format. Each returns its signature."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


class TinyCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return out


CNN_SIGNATURE: dict[str, Any] = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 3, 16, 16]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 4]}],
}


def save_torchscript_cnn(path: Path, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(TinyCnn().eval()), str(path))
    return CNN_SIGNATURE


def save_pt2_cnn(path: Path, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        TinyCnn().eval(), (torch.randn(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, str(path))
    return {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 16, 16]}],
        "outputs": [{"name": "linear", "dtype": "float32", "shape": [-1, 4]}],
    }


def save_onnx_cnn(path: Path, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export_legacy(path)
    return CNN_SIGNATURE


def _export_legacy(path: Path) -> None:
    torch.onnx.export(
        TinyCnn().eval(),
        (torch.randn(2, 3, 16, 16),),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
