"""Parity's reference for an ONNX upload is ``onnx.reference``; where it gets an operator wrong, a
valid model was left "parity not applicable" (a Hugging Face BERT exported to ONNX was, on its
position ids' ``GatherElements``). The mended operators answer as ONNX Runtime does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from registry.conversion.reference_ops import MENDED
from tests.support.onnx_models import convert_upload, gather_rows


def test_an_upload_that_gathers_from_more_than_64_rows_passes_parity(tmp_path: Path) -> None:
    report = convert_upload(gather_rows(tmp_path / "gather.onnx"), tmp_path / "model.onnx")["report"]

    assert report["parity"]["status"] == "passed", report["parity"]
    assert report["parity"]["reference"] == "onnx.reference"


def test_gather_elements_answers_as_onnx_runtime_on_any_axis_with_negative_indices(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((5, 70, 3)).astype(np.float32)
    for axis in (0, 1, -1, 2):
        size = data.shape[axis]
        shape = list(data.shape)
        shape[axis] = 9
        indices = rng.integers(-size, size, shape).astype(np.int64)
        node = helper.make_node("GatherElements", ["data", "indices"], ["out"], axis=axis)
        graph = helper.make_graph(
            [node],
            "gather",
            [
                helper.make_tensor_value_info("data", TensorProto.FLOAT, list(data.shape)),
                helper.make_tensor_value_info("indices", TensorProto.INT64, shape),
            ],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        feeds = {"data": data, "indices": indices}

        (mended,) = ReferenceEvaluator(model, new_ops=MENDED).run(None, feeds)
        (expected,) = ort.InferenceSession(model.SerializeToString()).run(None, feeds)

        np.testing.assert_array_equal(mended, expected)
