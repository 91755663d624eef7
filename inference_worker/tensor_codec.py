"""Wire formats of tensors: v2 JSON, the binary tensor extension, gRPC contents.

Pure functions from what a client sent to ``np.ndarray`` and back, driven by
one table (``DATATYPES``) as MLServer's ``_DatatypeToNumpy`` is. Sizes are
checked against the declared shape *before* any buffer is read or allocated;
binary and raw gRPC data become arrays through ``np.frombuffer`` (no copy, no
Python list). ``BYTES`` tensors (UTF-8 strings; length-prefixed elements on
the wire) go through ``bytes_tensors``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from inference_worker.bytes_tensors import decode_elements, decode_strings, encode_elements
from inference_worker.config import Limits
from inference_worker.errors import InvalidRequest, PayloadTooLarge
from inference_worker.json_body import NumericData
from inference_worker.json_values import check_json_values


@dataclass(frozen=True, slots=True)
class Datatype:
    """One protocol datatype: its numpy dtype and its gRPC contents field."""

    name: str
    dtype: np.dtype[Any]
    grpc_field: str


def _dt(name: str, dtype: str, field: str) -> tuple[str, Datatype]:
    return name, Datatype(name, np.dtype(dtype), field)


DATATYPES: Final[dict[str, Datatype]] = dict(
    [
        _dt("BOOL", "?", "bool_contents"),
        _dt("UINT8", "<u1", "uint_contents"),
        _dt("UINT16", "<u2", "uint_contents"),
        _dt("UINT32", "<u4", "uint_contents"),
        _dt("UINT64", "<u8", "uint64_contents"),
        _dt("INT8", "<i1", "int_contents"),
        _dt("INT16", "<i2", "int_contents"),
        _dt("INT32", "<i4", "int_contents"),
        _dt("INT64", "<i8", "int64_contents"),
        _dt("FP16", "<f2", "fp32_contents"),
        _dt("FP32", "<f4", "fp32_contents"),
        _dt("FP64", "<f8", "fp64_contents"),
        _dt("BYTES", "O", "bytes_contents"),
    ]
)

ONNX_TO_DATATYPE: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_LITTLE_ENDIAN = sys.byteorder == "little"

SharedInput = Callable[[str, Datatype, tuple[int, ...], int, Any], "np.ndarray | None"]
"""Reads an input from the region its parameters name (``shm``): (name, datatype, shape, element
count, the tensor's parameters) -> the array, or None when the parameters name no region."""


def datatype(name: object) -> Datatype:
    """The table entry for a protocol datatype name, or a 400 naming it."""
    found = DATATYPES.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidRequest(f"unsupported datatype {name!r}; expected one of {', '.join(DATATYPES)}")
    return found


def check_shape(name: str, shape: object, limits: Limits) -> tuple[tuple[int, ...], int]:
    """Validate a declared shape; return it and its element count, or refuse."""
    if not isinstance(shape, list | tuple):
        raise InvalidRequest(f"input '{name}': shape must be a list of integers")
    if len(shape) > limits.max_tensor_rank:
        raise InvalidRequest(
            f"input '{name}': rank {len(shape)} exceeds the limit of {limits.max_tensor_rank}"
        )
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise InvalidRequest(f"input '{name}': shape {list(shape)} must hold non-negative integers")
        count *= dim
    if count > limits.max_tensor_elements:
        raise PayloadTooLarge(
            f"input '{name}': {count} elements exceed the limit of {limits.max_tensor_elements}"
        )
    if count == 0 and (held := math.prod(dim for dim in shape if dim)) > limits.max_tensor_elements:
        # No element, yet numpy cannot shape an array whose other dimensions pass its index range
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} has no elements but its other dimensions hold "
            f"{held} elements, past the limit of {limits.max_tensor_elements}"
        )
    return tuple(shape), count


def decode_raw(
    name: str, dt: Datatype, shape: tuple[int, ...], count: int, raw: bytes | memoryview
) -> np.ndarray:
    """Array over ``raw`` (no copy) after checking its length against the shape."""
    if dt.name == "BYTES":
        return decode_elements(name, shape, count, memoryview(raw))
    expected = count * dt.dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequest(
            f"input '{name}': {dt.name} shape {list(shape)} needs {expected} bytes of data, got {len(raw)}"
        )
    return np.ndarray(shape, dt.dtype, raw)  # frombuffer and reshape in one call


def decode_values(
    name: str, dt: Datatype, shape: tuple[int, ...], count: int, data: object, *, strict: bool = True
) -> np.ndarray:
    """Array from JSON (or typed gRPC) values: flat row-major, or nested.

    ``NumericData`` (a large array that ``json_body.loads`` cut out of the body) becomes the
    tensor without Python floats where it can (flat, or nested as the shape is), and is decoded
    as orjson's list otherwise.
    ``strict``: a JSON list holds exactly what the datatype takes (``check_json_values``); off
    only where our own answers are read back, which write a NaN output as null.
    """
    if isinstance(data, NumericData):
        fits = len(data) == count and (len(data.dims) == 1 or data.dims == shape)
        arr = data.cast(dt.dtype) if fits else None
        if arr is not None:
            return arr.reshape(shape)
        data = data.as_list()
    if not isinstance(data, list) and not (isinstance(data, Sized) and isinstance(data, Iterable)):
        raise InvalidRequest(f"input '{name}': data must be a list")
    if isinstance(data, str | bytes | Mapping):
        raise InvalidRequest(f"input '{name}': data must be a list")
    if dt.name == "BYTES":
        return decode_strings(name, shape, count, data)
    if strict and isinstance(data, list):
        check_json_values(name, dt.name, dt.dtype, data, len(shape))
    try:
        if dt.dtype.kind == "f" and dt.dtype.itemsize < 8:
            with np.errstate(over="raise"):  # past FP32's (FP16's) range numpy writes inf and warns
                arr = _array(data, dt.dtype, count)
        else:
            arr = _array(data, dt.dtype, count)
    except (OverflowError, FloatingPointError):
        raise InvalidRequest(f"input '{name}': a value is outside the range of {dt.name}") from None
    except (ValueError, TypeError):
        raise InvalidRequest(
            f"input '{name}': data does not hold {dt.name} values of a regular shape"
        ) from None
    if arr.size != count:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} needs {count} elements, data holds {arr.size}"
        )
    return arr.reshape(shape)


def _array(data: Any, dtype: np.dtype[Any], count: int) -> np.ndarray:
    if len(data) == count and (count == 0 or not isinstance(data, list) or not isinstance(data[0], list)):
        # The common flat list: fromiter skips numpy's nested-shape discovery.
        return np.fromiter(data, dtype=dtype, count=count)
    return np.asarray(data, dtype=dtype)


def datatype_of(arr: np.ndarray) -> str:
    """Protocol datatype of an output array."""
    if arr.dtype.kind in "OUS":
        return "BYTES"
    for dt in DATATYPES.values():
        if dt.dtype == arr.dtype.newbyteorder("<") and dt.name != "BYTES":
            return dt.name
    raise InvalidRequest(f"the model returned dtype {arr.dtype}, which the protocol cannot carry")


def json_data(arr: np.ndarray) -> object:
    """What orjson (with OPT_SERIALIZE_NUMPY) writes as a tensor's flat ``data``."""
    if arr.dtype.kind in "OUS":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    return np.ascontiguousarray(arr).reshape(-1)


def raw_bytes(arr: np.ndarray) -> bytes:
    """A tensor's bytes as the binary extension and raw gRPC contents carry them."""
    if arr.dtype.kind in "OUS":
        return encode_elements(arr)
    if _LITTLE_ENDIAN and arr.dtype.isnative:
        return arr.tobytes()  # C order, one copy
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def check_declared(name: str, dt: Datatype, expected: Mapping[str, str] | None) -> None:
    """Refuse an input whose declared datatype is not the model's, before its data is decoded.

    ``expected`` maps the model's input names to their datatypes (None: the model is not known
    yet). Decoding first would answer with the decoder's complaint ("BYTES data must hold
    strings") instead of what is wrong: the datatype, and what the model takes.
    """
    want = expected.get(name) if expected is not None else None
    if want is not None and dt.name != want:
        raise InvalidRequest(f"input '{name}' has datatype {dt.name}; the model takes {want}")


def decode_json_inputs(
    inputs: object,
    binary: memoryview | None,
    limits: Limits,
    expected: Mapping[str, str] | None = None,
    shared: SharedInput | None = None,
) -> dict[str, np.ndarray]:
    """The ``inputs`` of a v2 JSON request; ``binary`` is the extension's tail, if any.

    ``expected``: the model's datatype of each input, compared with the declared one first;
    ``shared``: reads the inputs that name a shared memory region.
    """
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("'inputs' must be a non-empty list")
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise InvalidRequest("each input must be an object with name, datatype, shape and data")
        name = item.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= limits.max_name_length:
            raise InvalidRequest("each input needs a 'name' string of 1 to 256 characters")
        if name in decoded:
            raise InvalidRequest(f"input '{name}' appears twice")
        dt = datatype(item.get("datatype"))
        check_declared(name, dt, expected)
        shape, count = check_shape(name, item.get("shape"), limits)
        size = _binary_size(name, item.get("parameters"))
        if (
            shared is not None
            and (array := shared(name, dt, shape, count, item.get("parameters"))) is not None
        ):
            if size is not None or "data" in item:
                raise InvalidRequest(f"input '{name}' names a shared memory region and carries data too")
            decoded[name] = array
            continue
        if size is None:
            if "data" not in item:
                raise InvalidRequest(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
            decoded[name] = decode_values(name, dt, shape, count, item["data"])
            continue
        if "data" in item:
            raise InvalidRequest(f"input '{name}' has both 'data' and a binary_data_size parameter; send one")
        if binary is None or offset + size > len(binary):
            raise InvalidRequest(f"input '{name}': binary_data_size {size} runs past the end of the body")
        decoded[name] = decode_raw(name, dt, shape, count, binary[offset : offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data follow the last binary input")
    return decoded


def _binary_size(name: str, parameters: object) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"input '{name}': parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise InvalidRequest(f"input '{name}': binary_data_size must be a non-negative integer")
    return size


def decode_grpc_inputs(
    inputs: Sequence[Any],
    raw_contents: Sequence[bytes],
    limits: Limits,
    expected: Mapping[str, str] | None = None,
    shared: SharedInput | None = None,
) -> dict[str, np.ndarray]:
    """The inputs of a gRPC ``ModelInferRequest``: raw contents, typed contents, or a shared memory
    region (``expected`` and ``shared``: as for ``decode_json_inputs``). As in Triton, an input in
    shared memory has no entry in ``raw_input_contents``."""
    if not inputs:
        raise InvalidRequest("the request has no inputs")
    if raw_contents and len(raw_contents) > len(inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw_contents)} entries for {len(inputs)} inputs; send one per input"
        )
    decoded: dict[str, np.ndarray] = {}
    raw_index = 0
    for position in range(len(inputs)):  # indexing a repeated field is cheaper than iterating it
        tensor = inputs[position]
        name = tensor.name
        if not 0 < len(name) <= limits.max_name_length:
            raise InvalidRequest("each input needs a name of 1 to 256 characters")
        if name in decoded:
            raise InvalidRequest(f"input '{name}' appears twice")
        dt = datatype(tensor.datatype)
        check_declared(name, dt, expected)
        shape, count = check_shape(name, tensor.shape[:], limits)
        parameters = tensor.parameters
        if (
            shared is not None
            and parameters
            and (array := shared(name, dt, shape, count, parameters)) is not None
        ):
            if tensor.HasField("contents"):
                raise InvalidRequest(f"input '{name}' names a shared memory region and carries contents too")
            decoded[name] = array
            continue
        if raw_contents:
            if tensor.HasField("contents"):  # the protocol allows one or the other, as Triton checks
                raise InvalidRequest(
                    f"input '{name}' carries contents while the request sends raw_input_contents; send one"
                )
            if raw_index == len(raw_contents):
                raise InvalidRequest(
                    f"raw_input_contents has {len(raw_contents)} entries: none is left for input '{name}'"
                )
            decoded[name] = decode_raw(name, dt, shape, count, raw_contents[raw_index])
            raw_index += 1
            continue
        values = getattr(tensor.contents, dt.grpc_field)
        if len(values) != count:
            raise InvalidRequest(
                f"input '{name}': shape {list(shape)} needs {count} {dt.name} values in "
                f"contents.{dt.grpc_field}, got {len(values)}"
            )
        decoded[name] = decode_values(name, dt, shape, count, values)
    if raw_index != len(raw_contents):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw_contents)} entries for {raw_index} inputs sent raw; "
            "send one per input not in shared memory"
        )
    return decoded
