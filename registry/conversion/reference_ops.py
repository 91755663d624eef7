"""Operators ``onnx.reference`` gets wrong, mended for parity's reference. Pure: numpy and onnx.

``onnx.reference`` is parity's only reference for an ONNX upload; where its implementation of an
operator fails on a valid graph, the version is left "parity not applicable". Each class here
replaces one operator (``ReferenceEvaluator(model, new_ops=MENDED)``) and says what it mends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx.reference.op_run import OpRun


class GatherElements(OpRun):
    """onnx 1.23 gathers with ``np.choose``, which takes at most 64 choices (numpy 2): past 64 rows
    on the gathered axis its fallback answers a wrong shape ("cannot reshape array of size 1") or
    raises. Hugging Face BERT-style exports gather position ids so. ``np.take_along_axis`` is the
    same operation for any size (negative indices count from the end, as the operator defines)."""

    op_domain = ""

    def _run(self, data: np.ndarray, indices: np.ndarray, axis: Any = None) -> tuple[np.ndarray]:
        axis = int(axis or 0)
        if axis < 0:
            axis += data.ndim
        positive = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, positive.astype(np.int64), axis=axis),)


MENDED: list[type[OpRun]] = [GatherElements]
