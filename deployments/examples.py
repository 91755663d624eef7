"""The request the deployment page offers to copy, built from the served version's signature.

It is a complete request (zeros of the right shape and the protocol's datatype names, ``FP32``
and not ``float32``), so pasted as is it answers 200. Large inputs are written by a one-line
Python generator piped into curl rather than spelled out.
"""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import numpy as np

from inference_worker.tensor_codec import DATATYPES

INLINE_VALUES = 32
"""Inputs with more values than this are generated instead of written out."""


def protocol_datatype(dtype: str) -> str:
    """The Open Inference Protocol's name of a signature dtype (``float32`` -> ``FP32``)."""
    if dtype == "string":
        return "BYTES"
    try:
        wanted = np.dtype(dtype)
    except TypeError:
        return dtype.upper()
    for name, entry in DATATYPES.items():
        if entry.dtype == wanted:
            return name
    return dtype.upper()


def _example_shape(shape: list[Any]) -> list[int]:
    """Batch of one; any other dynamic dimension as 1."""
    dims = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else 1 for d in shape]
    return [1, *dims[1:]] if dims else [1]


def infer_request(signature: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A v2 request body of zeros for every input, and whether it is small enough to inline."""
    inputs = []
    small = True
    for tensor in signature.get("inputs") or []:
        shape = _example_shape(list(tensor.get("shape") or []))
        datatype = protocol_datatype(str(tensor.get("dtype", "float32")))
        count = math.prod(shape)
        small = small and count <= INLINE_VALUES
        zero: Any = {"BOOL": False, "BYTES": ""}.get(datatype, 0.0 if datatype.startswith("FP") else 0)
        name = tensor.get("name")
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": [zero] * count})
    return {"inputs": inputs}, small


def infer_curl(*, gateway: str, deployment: str, signature: dict[str, Any]) -> str:
    """A shell command that calls the deployment through the gateway and prints the answer."""
    url = shlex.quote(f"{gateway.rstrip('/')}/v2/models/{deployment}/infer")
    body, small = infer_request(signature)
    if small:
        return (
            f"curl -s {url} \\\n  -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(json.dumps(body))}"
        )
    # A Python literal of the inputs without their data (names, datatypes and shapes are valid Python
    # as JSON), then zeros of each one's size.
    described = json.dumps([{k: v for k, v in item.items() if k != "data"} for item in body["inputs"]])
    fills = []
    for index, item in enumerate(body["inputs"]):
        zero = repr(item["data"][0]) if item["data"] else "0"
        fills.append(f'inputs[{index}]["data"] = [{zero}] * {len(item["data"])}')
    printed = 'print(json.dumps({"inputs": inputs}))'
    generator = f"import json; inputs = {described}; {'; '.join(fills)}; {printed}"
    return (
        f"python3 -c {shlex.quote(generator)} \\\n  | curl -s {url} -H 'Content-Type: application/json' -d @-"
    )
