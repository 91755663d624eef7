"""ONNX uploads exported with a fixed batch of 1 (``torch.onnx.export`` without ``dynamic_axes``):
conversion frees the batch dimension when the graph answers a batch as single runs, else warns.

Each model here is exported by the test itself the way a user would, at batch 1, through both of
torch's exporters, and converted in-process with ``convert()`` (real ONNX Runtime, no database).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from inference_worker.config import DynamicBatching
from registry.conversion.inspection import inspect_onnx
from tests.support.onnx_models import convert_upload
from tests.support.workers import LONGEST_DELAY_US, make_config, running, v2_body

IMAGE = (3, 8, 8)


class _ViewCNN(nn.Module):
    """The classic ``x.view(x.size(0), -1)`` head: exported at batch 1 it reshapes to ``[1, 256]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(x)))
        out: torch.Tensor = self.head(y.view(y.size(0), -1))
        return out


class _Attention(nn.Module):
    """A self-attention block written as Hugging Face models write theirs: token ids and a mask,
    ``view(b, t, heads, d)``, scaled dot-product attention (exported, it merges batch and heads)."""

    def __init__(self, width: int = 16, heads: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = heads
        self.embed, self.qkv = nn.Embedding(50, width), nn.Linear(width, 3 * width)
        self.out, self.head = nn.Linear(width, width), nn.Linear(width, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).split(d, -1)
        )
        attended = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :].bool()
        )
        out: torch.Tensor = self.head((x + self.out(attended.transpose(1, 2).reshape(b, t, d)))[:, 0])
        return out


class _MixesSamples(nn.Module):
    """Each row depends on the others: no batch of it is the same samples run alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=0, keepdim=True) + 1


class _Table(nn.Module):
    """An output of one row whatever the input: not a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.arange(4.0).reshape(1, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, self.table + x.sum() * 0


def _export(module: nn.Module, path: Path, shape: tuple[int, ...], *, dynamo: bool) -> dict[str, Any]:
    module.eval()
    names = ["y"] if not isinstance(module, _Table) else ["y", "row"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs: dict[str, Any] = {"external_data": False} if dynamo else {}
        torch.onnx.export(
            module,
            (torch.randn(1, *shape),),
            str(path),
            dynamo=dynamo,
            input_names=["x"],
            output_names=names,
            **kwargs,
        )
    signature: dict[str, Any] = inspect_onnx(str(path))["signature"]
    return signature


def _convert(
    tmp_path: Path, module: nn.Module, shape: tuple[int, ...], *, dynamo: bool
) -> tuple[dict[str, Any], Path, Path]:
    source = tmp_path / "uploaded.onnx"
    signature = _export(module, source, shape, dynamo=dynamo)
    assert signature["inputs"][0]["shape"] == [1, *shape]
    output = tmp_path / "converted.onnx"
    result = convert_upload(source, output, seed=11)
    return result, source, output


def _assert_a_batch_answers_as_single_runs(source: Path, output: Path, *, seed: int) -> None:
    """Six images through the converted file at once answer as each alone through the upload."""
    images = np.random.default_rng(seed).standard_normal((6, *IMAGE)).astype(np.float32)
    fixed = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    alone = np.concatenate([fixed.run(None, {"x": images[i : i + 1]})[0] for i in range(6)])
    freed = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(freed.run(None, {"x": images})[0], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_a_cnn_exported_at_batch_1_is_converted_with_a_batch_dimension(tmp_path: Path, dynamo: bool) -> None:
    result, source, output = _convert(tmp_path, _ViewCNN(), IMAGE, dynamo=dynamo)

    report = result["report"]
    assert report["dynamic_batch"] is True
    assert result["signature"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, *IMAGE]}]
    assert result["signature"]["outputs"] == [{"name": "y", "dtype": "float32", "shape": [-1, 5]}]
    assert any("conversion made it the batch dimension" in w for w in report["warnings"])
    assert report["parity"]["passed"] is True
    assert report["parity"]["batch_sizes"] == [1, 3, 8]
    assert [b["batch_size"] for b in report["profile"]["batches"]] == [1, 2, 4]
    assert sorted(os.listdir(tmp_path)) == ["converted.onnx", "uploaded.onnx"]  # no trial file left
    _assert_a_batch_answers_as_single_runs(source, output, seed=0)


def test_a_worker_batches_the_freed_model_and_answers_each_request_its_own_row(tmp_path: Path) -> None:
    result, source, output = _convert(tmp_path, _ViewCNN(), IMAGE, dynamo=False)
    assert result["report"]["dynamic_batch"] is True
    fixed = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    images = [np.random.default_rng(i).standard_normal((1, *IMAGE)).astype(np.float32) for i in range(4)]
    config = make_config(
        output,
        "cnn",
        batching=DynamicBatching(max_queue_delay_microseconds=LONGEST_DELAY_US, preferred_batch_sizes=(4,)),
    )
    with running(config) as worker, ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda x: httpx.post(f"{worker.url}/v2/models/cnn/infer", json=v2_body({"x": x}), timeout=30),
                images,
            )
        )
        assert [a.status_code for a in answers] == [200] * 4
        assert worker.metric("kiln_worker_batches_total") == 1  # the four requests ran as one batch
        assert worker.metric("kiln_worker_inferences_total") == 4
    for x, answer in zip(images, answers, strict=True):
        got = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(1, 5)
        np.testing.assert_allclose(got, fixed.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_a_model_that_mixes_samples_keeps_its_batch_of_1_with_a_warning(tmp_path: Path, dynamo: bool) -> None:
    result, source, output = _convert(tmp_path, _MixesSamples(), (5,), dynamo=dynamo)

    report = result["report"]
    assert report["dynamic_batch"] is False
    assert result["signature"]["inputs"][0]["shape"] == [1, 5]
    (warning,) = [w for w in report["warnings"] if "fixed first dimension of 1" in w]
    assert "differs from the samples run one at a time" in warning
    assert "workers run each request alone" in warning
    assert "dynamic_axes" in warning
    assert output.read_bytes() == source.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["converted.onnx", "uploaded.onnx"]


def test_an_output_of_one_row_whatever_the_batch_keeps_the_batch_of_1(tmp_path: Path) -> None:
    result, source, output = _convert(tmp_path, _Table(), (4,), dynamo=False)

    report = result["report"]
    assert report["dynamic_batch"] is False
    (warning,) = [w for w in report["warnings"] if "fixed first dimension of 1" in w]
    assert "'row' has shape [1, 4] for a batch of 3, not [3, 4]" in warning
    assert output.read_bytes() == source.read_bytes()


def test_an_onnx_model_with_a_fixed_batch_other_than_1_is_served_as_it_is_with_a_warning(
    tmp_path: Path,
) -> None:
    source = tmp_path / "uploaded.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_MixesSamples(), (torch.randn(4, 5),), str(source), dynamo=False, input_names=["x"])
    result = convert_upload(source, tmp_path / "converted.onnx", seed=11)

    assert result["report"]["dynamic_batch"] is False
    assert result["signature"]["inputs"][0]["shape"] == [4, 5]
    (warning,) = [w for w in result["report"]["warnings"] if "fixed first dimension" in w]
    assert warning.startswith("the model's input 'x' [4, 5] has a fixed first dimension: workers run each")
    assert "dynamic_axes" in warning


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_an_attention_block_exported_at_batch_1_is_freed_and_answers_as_single_runs(
    tmp_path: Path, dynamo: bool
) -> None:
    source, output = tmp_path / "uploaded.onnx", tmp_path / "converted.onnx"
    example = (torch.randint(0, 50, (1, 6)), torch.ones(1, 6, dtype=torch.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options: dict[str, Any] = {"external_data": False} if dynamo else {}
        options.update(input_names=["ids", "mask"], output_names=["logits"])
        torch.onnx.export(_Attention().eval(), example, str(source), dynamo=dynamo, **options)

    result = convert_upload(source, output, seed=11)

    assert result["report"]["dynamic_batch"] is True, result["report"]["warnings"]
    assert [i["shape"] for i in result["signature"]["inputs"]] == [[-1, 6], [-1, 6]]
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 50, (5, 6)).astype(np.int64)
    mask = np.ones((5, 6), np.int64)
    mask[:, 4:] = rng.integers(0, 2, (5, 2))
    fixed = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    alone = [fixed.run(None, {"ids": ids[i : i + 1], "mask": mask[i : i + 1]})[0] for i in range(5)]
    freed = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (together,) = freed.run(None, {"ids": ids, "mask": mask})
    np.testing.assert_allclose(together, np.concatenate(alone), rtol=1e-4, atol=1e-5)


class _MaskOfTheFirstSample(nn.Module):
    """Pads as Hugging Face models build their masks: ``mask[arange(batch)]`` read as booleans.
    Exported at batch 1, the arange is the constant ``[0]``: freed, every sample of a batch would
    take the first one's padding, which only a mask with zeros shows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(1000, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[torch.arange(ids.shape[0])].bool()
        out: torch.Tensor = (self.embed(ids) * keep.unsqueeze(-1)).sum(1)
        return out


def test_a_mask_built_for_the_first_sample_only_keeps_the_batch_of_1(tmp_path: Path) -> None:
    source, output = tmp_path / "uploaded.onnx", tmp_path / "converted.onnx"
    example = (torch.randint(0, 1000, (1, 6)), torch.ones(1, 6, dtype=torch.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _MaskOfTheFirstSample().eval(), example, str(source), dynamo=True, external_data=False,
            input_names=["ids", "mask"], output_names=["pooled"],
        )  # fmt: skip

    result = convert_upload(source, output, seed=11)

    assert result["report"]["parity"]["input_int_range"][1] > 2  # large draws: masks with no zero
    assert result["report"]["dynamic_batch"] is False
    (warning,) = [w for w in result["report"]["warnings"] if "fixed first dimension of 1" in w]
    assert "'pooled' of a batch of 3 differs from the samples run one at a time" in warning


class _ClassToken(nn.Module):
    """A vision transformer's embedding: patches, then ``cat([cls_token.expand(b, -1, -1), patches])``;
    exported at batch 1, the expanded class token is folded into a constant of one row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], dim=1)
        out: torch.Tensor = self.head(tokens.softmax(-1).cumsum(1))[:, 0]
        return out


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_a_class_token_joined_to_the_patches_is_freed_and_answers_as_single_runs(
    tmp_path: Path, dynamo: bool
) -> None:
    result, source, output = _convert(tmp_path, _ClassToken(), IMAGE, dynamo=dynamo)

    assert result["report"]["dynamic_batch"] is True, result["report"]["warnings"]
    _assert_a_batch_answers_as_single_runs(source, output, seed=4)
