"""``BYTES`` tensors: object arrays of UTF-8 strings (what ONNX Runtime's string tensors take) from
the binary extension's and raw gRPC contents' elements, each a 4-byte little-endian length then
the bytes, from JSON (or typed gRPC) strings, and back to elements.

``tensor_codec`` calls these for the ``BYTES`` datatype after it checked the shape; a JSON list
may be flat or nested as the shape (Triton takes both), never deeper.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from inference_worker.errors import InvalidRequest

_LENGTH = struct.Struct("<I")


def decode_elements(name: str, shape: tuple[int, ...], count: int, buf: memoryview) -> np.ndarray:
    """Input ``name`` of ``shape`` (``count`` elements) from length-prefixed elements."""
    if count * _LENGTH.size > len(buf):
        raise InvalidRequest(f"input '{name}': {count} BYTES elements cannot fit in {len(buf)} bytes")
    out = np.empty(count, dtype=object)
    pos, end = 0, len(buf)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidRequest(f"input '{name}': BYTES data ends inside element {i}")
        (length,) = _LENGTH.unpack_from(buf, pos)
        pos += 4
        if pos + length > end:
            raise InvalidRequest(f"input '{name}': BYTES element {i} runs past the end of the data")
        out[i] = _utf8(name, bytes(buf[pos : pos + length]))
        pos += length
    if pos != end:
        raise InvalidRequest(
            f"input '{name}': {end - pos} bytes of BYTES data left over after {count} elements"
        )
    return out.reshape(shape)


def decode_strings(name: str, shape: tuple[int, ...], count: int, data: Iterable[object]) -> np.ndarray:
    """Input ``name`` of ``shape`` from strings (or UTF-8 bytes), flat or nested as the shape: a
    list is flattened (one level per dimension past the first, each level regular), a string is
    an element."""
    flat = list(data)
    for _ in shape[1:]:
        if not flat or type(flat[0]) is not list:
            break
        width = len(flat[0])
        if not all(type(row) is list and len(row) == width for row in flat):
            raise InvalidRequest(f"input '{name}': {_IRREGULAR}")
        flat = [item for row in flat for item in row]  # type: ignore[attr-defined]
    if len(flat) != count:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} needs {count} elements, data holds {len(flat)}"
        )
    out = np.empty(count, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            out[i] = item
        elif isinstance(item, bytes):
            out[i] = _utf8(name, item)
        elif type(item) is list:  # a row beside a string, or lists deeper than the shape
            raise InvalidRequest(f"input '{name}': {_IRREGULAR}")
        else:
            raise InvalidRequest(f"input '{name}': BYTES data must hold strings")
    return out.reshape(shape)


_IRREGULAR = "data is not a regular nesting of lists at most as deep as its shape"


def encode_elements(arr: np.ndarray) -> bytes:
    """A string tensor's elements, length-prefixed, in C order."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        value = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def _utf8(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"input '{name}': BYTES element is not valid UTF-8") from None
