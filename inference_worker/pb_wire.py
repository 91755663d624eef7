"""Protobuf wire encoding by hand, for the few messages on a hot path.

A ``ModelInferResponse`` built as a protobuf object (a message, an output
tensor added to its repeated field, the shape copied in, the raw contents
appended, then serialized) costs several microseconds per answer, about as much
as the rest of the gRPC framing: here its bytes are joined from pieces that are
the same for every answer of a worker (model name and version, each output's
name and datatype) and the few that are not (the request's id, each output's
shape and data). What protobuf's own ``SerializeToString`` writes for the same
response is the same bytes, field for field (a test compares them).

Field numbers are those of ``protos/grpc_service.proto``: ``ModelInferResponse``
is ``model_name = 1, model_version = 2, id = 3, outputs = 5`` (each an
``InferOutputTensor``: ``name = 1, datatype = 2, shape = 3``, packed int64) and
``raw_output_contents = 6``. Proto3 leaves empty strings out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_SHAPES_CACHED = 256


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + varint(len(payload)) + payload


def string_field(tag: bytes, text: str) -> bytes:
    """A string field, left out when empty (proto3)."""
    return length_field(tag, text.encode()) if text else b""


class InferResponseEncoder:
    """``ModelInferResponse`` bytes for one model: its name, version and outputs are fixed."""

    def __init__(self, model_name: str, model_version: str, outputs: Sequence[tuple[str, str]]) -> None:
        """``outputs``: each output's name and protocol datatype, in signature order."""
        self._head = string_field(b"\x0a", model_name) + string_field(b"\x12", model_version)
        self._tensors = [string_field(b"\x0a", name) + string_field(b"\x12", dt) for name, dt in outputs]
        self._shapes: dict[tuple[int, ...], bytes] = {}

    def encode(self, request_id: str, outputs: Sequence[tuple[int, np.ndarray, bytes]]) -> bytes:
        """The response: for each output, its signature index, its array (for the shape) and its raw
        contents, in the order the client asked for them."""
        parts = [self._head, string_field(b"\x1a", request_id)]
        for index, array, _ in outputs:
            tensor = self._tensors[index] + self._shape(array.shape)
            parts += (b"\x2a", varint(len(tensor)), tensor)
        for _, _, raw in outputs:
            parts += (b"\x32", varint(len(raw)), raw)
        return b"".join(parts)

    def _shape(self, shape: tuple[int, ...]) -> bytes:
        field = self._shapes.get(shape)
        if field is None:
            field = length_field(b"\x1a", b"".join(varint(dim) for dim in shape)) if shape else b""
            if len(self._shapes) >= _SHAPES_CACHED:
                self._shapes.clear()
            self._shapes[shape] = field
        return field


def stream_response(infer_response: bytes) -> bytes:
    """A ``ModelStreamInferResponse`` carrying ``infer_response`` (field 2)."""
    return length_field(b"\x12", infer_response)


def stream_error(message: str, request_id: str = "") -> bytes:
    """A ``ModelStreamInferResponse`` carrying ``error_message`` (field 1) and, as Triton's does so
    that the client knows which request failed, an ``infer_response`` (field 2) with the failed
    request's ``id`` when it had one."""
    error = length_field(b"\x0a", message.encode())
    if not request_id:
        return error
    return error + length_field(b"\x12", string_field(b"\x1a", request_id))
