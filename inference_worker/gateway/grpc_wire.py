"""The few protobuf wire operations the gateway's gRPC proxy needs, on serialized bytes.

The proxy passes messages through as bytes (no decode, no re-encode of the
tensors): it only reads the model name a request names, rewrites it for a
variant whose workers answer to another name, and labels answers with the
variant (``pb_wire`` wraps a ``ModelInferResponse`` as a ``ModelStreamInferResponse``).
Each is a few varints at the front or the end of the message, thanks to two
rules of the protobuf encoding: a singular field seen twice takes its last
value, and a repeated (or map) field may be continued anywhere.

Field numbers are those of ``protos/grpc_service.proto``: ``ModelInferRequest``,
``ModelReadyRequest`` and ``ModelMetadataRequest`` all name the model in
field 1; ``ModelInferResponse.parameters`` is field 4 (``map<string,
InferParameter>``, whose ``string_param`` is field 3).
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf.message import DecodeError

from inference_worker import build_protos
from inference_worker.pb_wire import length_field

NAME_FIELD = 1
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_NAME_TAG = b"\x0a"  # field 1, length-delimited
_PARAMETER_TAG = b"\x22"  # field 4 (ModelInferResponse.parameters), length-delimited
VARIANT_PARAMETER = "kiln_variant"
VERSION_PARAMETER = "kiln_model_version"


PARSED_UP_TO = 4096
"""A request up to this size has its name read by protobuf's C parser, about 4x faster than the
scan; a larger one is scanned (the parser would copy its tensors as unknown fields)."""


class WireError(ValueError):
    """The bytes are not a protobuf message."""


@functools.cache
def _names_only() -> Any:
    """``ModelReadyRequest``: fields 1 and 2 are strings, the model's name and version, as in every
    request the proxy routes; the others are kept as unknown fields."""
    return build_protos.load()[0].ModelReadyRequest.FromString


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def read_name(message: bytes) -> str | None:
    """The string in field 1 of ``message`` (its last occurrence), or None without one (or empty).

    The parser also takes well-formed groups (deprecated wire types 3 and 4) the scan refuses."""
    if len(message) <= PARSED_UP_TO:
        try:
            return _names_only()(message).name or None
        except DecodeError as exc:
            raise WireError(str(exc) or "not a protobuf message") from None
    return _scanned_name(message)


def _scanned_name(message: bytes) -> str | None:
    found: str | None = None
    offset, end = 0, len(message)
    while offset < end:
        key, offset = _read_varint(message, offset)
        number, kind = key >> 3, key & 7
        if kind == _VARINT:
            _, offset = _read_varint(message, offset)
        elif kind == _FIXED64:
            offset += 8
        elif kind == _FIXED32:
            offset += 4
        elif kind == _LENGTH:
            size, offset = _read_varint(message, offset)
            if offset + size > end:
                raise WireError("a field runs past the end of the message")
            if number == NAME_FIELD:
                try:
                    found = message[offset : offset + size].decode()
                except UnicodeDecodeError:
                    raise WireError("the model name is not UTF-8") from None
            offset += size
        else:
            raise WireError(f"unsupported wire type {kind}")
        if offset > end:
            raise WireError("a field runs past the end of the message")
    return found or None


def with_name(message: bytes, name: str) -> bytes:
    """``message`` naming ``name`` in field 1 (appended: the last occurrence wins)."""
    return message + length_field(_NAME_TAG, name.encode())


def labels(variant: str, version: str) -> bytes:
    """``ModelInferResponse.parameters`` entries naming the variant and the model version that answered."""
    out = b""
    for key, value in ((VARIANT_PARAMETER, variant), (VERSION_PARAMETER, version)):
        parameter = length_field(b"\x1a", value.encode())  # InferParameter.string_param = 3
        entry = length_field(b"\x0a", key.encode()) + length_field(b"\x12", parameter)
        out += length_field(_PARAMETER_TAG, entry)
    return out
