"""Triton's classification extension: an output asked for as its top ``k`` classes.

A requested output with the ``classification`` parameter (``class_count`` in tritonclient: the
HTTP output's ``parameters``, the gRPC output's ``int64_param``) comes back as BYTES of shape
``[batch, k]`` instead of the model's tensor: for each row of the batch, the ``k`` highest values
of the row (all its elements, flattened) as ``"<value>:<index>"``, highest first, ties in index
order. A model without a batch dimension has one row, the whole tensor, as in Triton (a model with
``max_batch_size`` 0): the answer is ``[k]``. ``k`` larger than a row is cut to the row's size.
Values are written as Triton writes them (``std::to_string``: six decimals for a float, the
integer for an integer type); a NaN ranks last. Numeric outputs only. Where the version has
labels for the output (``contracts.labels``), each class with one reads
``"<value>:<index>:<label>"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from inference_worker.errors import InvalidRequest

PARAMETER = "classification"


def class_count(value: Any, datatype: str, output: str) -> int:
    """The ``classification`` parameter of ``output`` (of ``datatype``): a positive integer for a
    numeric output, or a 400 that says what is wrong, before the model runs."""
    if type(value) is not int or value < 1:
        raise InvalidRequest(
            f"output '{output}': 'classification' must be a positive integer (the number of classes)"
        )
    if datatype in ("BYTES", "BOOL"):
        raise InvalidRequest(f"output '{output}' is {datatype}; classification takes a numeric output")
    return value


def grpc_value(parameter: Any) -> Any:
    """The value of a gRPC ``InferParameter`` that can hold a count (tritonclient sends ``int64_param``)."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind in ("int64_param", "uint64_param") else None


def classify(
    array: np.ndarray, count: int, labels: tuple[str, ...] = (), *, batched: bool = True
) -> np.ndarray:
    """The top ``count`` classes of each row of ``array`` (BYTES ``[batch, count]``, an object array),
    each with its label from ``labels`` (by class index) when it has one. Not ``batched`` (the
    model has no batch dimension), the whole tensor is one row and the answer ``[count]``."""
    if not batched:
        whole: np.ndarray = classify(array.reshape(1, array.size), count, labels)[0]
        return whole
    batch, width = (array.shape[0], math.prod(array.shape[1:])) if array.ndim else (1, 1)
    rows = array.reshape(batch, width)  # not -1: it cannot be read off an array without elements
    count = min(count, rows.shape[1])
    keys = rows
    if rows.dtype.kind == "f":
        keys = np.where(np.isnan(rows), -np.inf, rows)  # a NaN ranks last, not first
    # Descending by value, ties by ascending index: a stable ascending sort of the columns reversed,
    # read backwards.
    order = rows.shape[1] - 1 - np.argsort(keys[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :count]
    values = np.take_along_axis(rows, order, axis=1)
    spell = "{:f}:{}" if rows.dtype.kind == "f" else "{}:{}"
    out = np.empty(order.shape, dtype=object)
    for r in range(order.shape[0]):
        for c in range(order.shape[1]):
            index = int(order[r, c])
            answer = spell.format(values[r, c].item(), index)
            out[r, c] = (f"{answer}:{labels[index]}" if index < len(labels) else answer).encode()
    return out
