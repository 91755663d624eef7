"""KServe's v1 protocol (``{"instances": [...]}`` in, ``{"predictions": [...]}`` out) for the
worker's HTTP routes: the instances as the model's input tensors, its outputs as predictions.

One input: the instances are its rows. Several inputs: each instance is an object of them. A
model without a batch dimension takes exactly one instance. The instances of a batched model's
one input that ``json_body`` cut out of the body (a regular nesting of numbers) go to the codec
as v2 data does, straight from their buffer; anything else decodes orjson's list, which words any
refusal.
"""

from __future__ import annotations

import numpy as np

from inference_worker.batcher import Outputs
from inference_worker.config import Limits
from inference_worker.errors import InvalidRequest, PayloadTooLarge
from inference_worker.json_body import NumericData
from inference_worker.runtime import ModelSignature
from inference_worker.tensor_codec import DATATYPES, decode_values


def inputs(instances: object, signature: ModelSignature | None, limits: Limits) -> dict[str, np.ndarray]:
    """The model's input tensors from a v1 body's ``instances``; ``InvalidRequest`` says what is wrong."""
    if signature is None:
        raise InvalidRequest("the model is still loading")
    if isinstance(instances, NumericData):
        tensor = _from_buffer(instances, signature, limits)
        if tensor is not None:
            return tensor
        instances = instances.as_list()
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest("'instances' must be a non-empty list")
    specs = signature.inputs
    if not signature.batched and len(instances) != 1:
        raise InvalidRequest("this model has no batch dimension: send exactly one instance")
    if len(specs) == 1:
        columns: dict[str, list[object]] = {specs[0].name: instances}
    else:
        if not all(isinstance(row, dict) for row in instances):
            raise InvalidRequest("this model takes several inputs: each instance must be an object of them")
        columns = {spec.name: [row.get(spec.name) for row in instances] for spec in specs}
    tensors = {}
    for spec in specs:
        rows = columns[spec.name]
        probe = np.asarray(rows[0], dtype=object) if rows[0] is not None else None
        if probe is None or probe.ndim != len(spec.shape) - (1 if signature.batched else 0):
            raise InvalidRequest(f"input '{spec.name}': each instance must have shape {list(spec.shape[1:])}")
        shape = (len(rows), *probe.shape) if signature.batched else probe.shape
        count = int(np.prod(shape))
        if count > limits.max_tensor_elements:
            raise PayloadTooLarge(f"input '{spec.name}': {count} elements exceed the limit")
        source = rows if signature.batched else rows[0]
        tensors[spec.name] = decode_values(spec.name, DATATYPES[spec.datatype], shape, count, source)
    return tensors


def _from_buffer(
    instances: NumericData, signature: ModelSignature, limits: Limits
) -> dict[str, np.ndarray] | None:
    """A batched model's one input, its instances one regular nesting of the input's rank: the
    codec's ``decode_values`` takes the buffer as it does v2 data (orjson's list where the values
    do not fit the datatype); None where the list path decides (several inputs, another rank, too
    many values)."""
    if len(signature.inputs) != 1 or not signature.batched:
        return None
    spec = signature.inputs[0]
    if len(instances.dims) != len(spec.shape) or len(instances) > limits.max_tensor_elements:
        return None
    dt = DATATYPES[spec.datatype]
    return {spec.name: decode_values(spec.name, dt, instances.dims, len(instances), instances)}


def predictions(outputs: Outputs, signature: ModelSignature | None) -> object:
    """The model's outputs as v1 predictions: one output's rows, or an object of them per row."""
    assert signature is not None  # noqa: S101 - only called with results of the model
    if len(outputs) == 1:
        return json_array(outputs[0])
    names = [spec.name for spec in signature.outputs]
    return [
        {name: json_array(out[row]) for name, out in zip(names, outputs, strict=True)}
        for row in range(len(outputs[0]))
    ]


def json_array(array: np.ndarray) -> object:
    """A (nested) array as orjson writes it; strings as a nested list."""
    if array.dtype.kind in "OUS":
        return np.vectorize(str, otypes=[object])(array).tolist()
    return np.ascontiguousarray(array)
