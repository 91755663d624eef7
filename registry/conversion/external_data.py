"""Fold an ONNX model's external data file into the model: one self-contained file. Pure: no Django.

``torch.onnx.export`` (its default, ``external_data=True``) and ``onnx.save_model(...,
save_as_external_data=True)`` write the graph to ``model.onnx`` and the weights to a file beside it
(``model.onnx.data``). An upload sends both; the sandboxed child copies each tensor's bytes from the
data file into the model and writes one file, which is what the platform stores, converts and
serves. The model's ``location`` names are never opened as paths: every external tensor must name
the same one, and its bytes come from the uploaded data file at the tensor's offset and length,
checked against the file's size and the tensor's own size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from registry.conversion.channel import ChildError, progress
from registry.conversion.onnx_proto import all_tensors, external_entries, parse_onnx

PROTOBUF_LIMIT = 2**31 - 1
"""The largest file protobuf (and so one ONNX file) can hold."""
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16}
_ITEM_BYTES.update({16: 2, 17: 1, 18: 1, 19: 1, 20: 1})  # bfloat16 and the float8 types
"""Bytes per element of the fixed-size ONNX element types (``TensorProto.DataType``)."""


def inline_external_data(model_path: str, data_path: str, output_path: str, *, max_bytes: int) -> int:
    """Write ``model_path`` with every external tensor's bytes read from ``data_path`` to
    ``output_path``; returns how many tensors were folded in. ``ChildError(invalid_artifact)`` when
    the model keeps no tensor outside, names more than one file, or a tensor's bytes are not where it
    says; ``max_bytes`` bounds the file written."""
    import onnx

    progress("folding the external data into the model")
    model = parse_onnx(model_path)
    outside = [(t, entries) for t in all_tensors(model) if (entries := external_entries(t)) is not None]
    if not outside:
        raise ChildError(
            "external_data: the model keeps all its tensors inside it; upload the .onnx file alone",
            "invalid_artifact",
        )
    places = {entries.get("location", "") for _, entries in outside}
    if len(places) > 1:
        named = ", ".join(repr(p[:80]) for p in sorted(places)[:4])
        raise ChildError(
            f"the model keeps its tensors in {len(places)} files ({named}); upload it with one external "
            "data file (onnx.save_model(model, path, save_as_external_data=True, "
            "all_tensors_to_one_file=True)) or as one self-contained file",
            "invalid_artifact",
        )
    size = os.path.getsize(data_path)
    spans = [(tensor, *_span(tensor, entries, size)) for tensor, entries in outside]
    limit = min(max_bytes, PROTOBUF_LIMIT)
    total = model.ByteSize() + sum(length for _, _, length in spans)
    if total > limit:
        raise ChildError(
            f"the model with its external data is {total} bytes, above the {limit} bytes one ONNX file "
            "may hold here",
            "invalid_artifact",
        )
    with open(data_path, "rb") as data:
        for tensor, offset, length in spans:
            data.seek(offset)
            tensor.raw_data = data.read(length)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    Path(output_path).write_bytes(model.SerializeToString())
    return len(spans)


def _span(tensor: Any, entries: dict[str, str], size: int) -> tuple[int, int]:
    """Where the tensor's bytes lie in the data file, ``(offset, length)``, checked against its shape
    and the file's size."""
    name = repr(tensor.name[:200])
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else size - offset
    except ValueError:
        raise ChildError(
            f"ONNX tensor {name}: its external data offset or length is not a number", "invalid_artifact"
        ) from None
    item = _ITEM_BYTES.get(tensor.data_type)
    if item is None:
        raise ChildError(
            f"ONNX tensor {name}: element type {tensor.data_type} cannot be kept as external data",
            "invalid_artifact",
        )
    elements = 1
    for dim in tensor.dims:
        elements *= int(dim)
    if offset < 0 or length < 0 or offset + length > size:
        raise ChildError(
            f"ONNX tensor {name}: bytes {offset} to {offset + length} of its external data, but the file "
            f"uploaded has {size} bytes (is it this model's data file?)",
            "invalid_artifact",
        )
    if length != elements * item:
        raise ChildError(
            f"ONNX tensor {name}: {length} bytes of external data for {elements} elements of "
            f"{item} bytes (is it this model's data file?)",
            "invalid_artifact",
        )
    return offset, length
