"""Shadow traffic, the pure parts: the copy sent to the shadow process, and the comparison.

The gateway hands each copy (a live request and its answer) to a separate,
low-priority process (``mirror`` starts it, ``shadow_child``
runs it) as one frame on a Unix socket: ``encode_copy`` / ``FrameReader``.
Frames are a 4-byte big-endian length, a 4-byte length of the JSON header,
the header, then raw bytes (here the request body and the live answer's body).

A copy of a gRPC ``ModelInfer`` has the method ``GRPC_METHOD``, the serialized
request as its body and the serialized ``ModelInferResponse`` as the live
answer's body; its replicas are the shadow's gRPC servers.

``decode_outputs`` reads the output tensors of a v2 answer (JSON or the binary
tensor extension) or a v1 ``predictions`` answer, ``decode_grpc_outputs`` those
of a ``ModelInferResponse``; ``compare`` gives, per
numeric output, the max absolute difference, and for classification-shaped
outputs (2-D, ``[batch, classes > 1]``) how many rows have the same argmax.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import DecodeError

from inference_worker import build_protos
from inference_worker.config import Limits
from inference_worker.gateway.proxy import UpstreamResponse
from inference_worker.tensor_codec import DATATYPES, check_shape, decode_raw, decode_values

_HEADER_LENGTH = re.compile(rb"(?im)^inference-header-content-length:\s*(\d+)\s*$")
_ENCODED = re.compile(rb"(?im)^content-encoding:\s*(?!identity)\S")
_LIMITS = Limits()
_FRAME = struct.Struct(">II")
MAX_FRAME_BYTES = 1 << 31
GRPC_METHOD = b"GRPC"
"""The ``method`` of a copy of a gRPC ``ModelInfer`` call."""


@dataclass(slots=True)
class ShadowCopy:
    """One live request and its answer, to be replayed on a shadow variant."""

    deployment: str
    variant: str
    version: str
    replicas: list[tuple[str, int, str]]
    """(host, port, version) of each ready replica of the shadow variant."""
    method: bytes
    url: bytes
    """Already rewritten for the shadow's model name."""
    headers: bytes
    body: bytes
    live: UpstreamResponse
    live_seconds: float


def frame(header: dict[str, Any], *payload: bytes) -> bytes:
    head = orjson.dumps(header)
    size = len(head) + sum(len(part) for part in payload)
    return b"".join((_FRAME.pack(size + 4, len(head)), head, *payload))


def encode_copy(copy: ShadowCopy) -> bytes:
    header = {
        "d": copy.deployment,
        "v": copy.variant,
        "ver": copy.version,
        "r": copy.replicas,
        "m": copy.method.decode("latin-1"),
        "u": copy.url.decode("latin-1"),
        "h": copy.headers.decode("latin-1"),
        "b": len(copy.body),
        "ls": copy.live.status,
        "lh": copy.live.headers.decode("latin-1"),
        "lt": copy.live_seconds,
    }
    return frame(header, copy.body, copy.live.body)


def decode_copy(header: dict[str, Any], payload: bytes) -> ShadowCopy:
    size = int(header["b"])
    live = UpstreamResponse(int(header["ls"]), str(header["lh"]).encode("latin-1"), payload[size:])
    return ShadowCopy(
        str(header["d"]),
        str(header["v"]),
        str(header["ver"]),
        [(str(host), int(port), str(version)) for host, port, version in header["r"]],
        str(header["m"]).encode("latin-1"),
        str(header["u"]).encode("latin-1"),
        str(header["h"]).encode("latin-1"),
        payload[:size],
        live,
        float(header["lt"]),
    )


class FrameReader:
    """Splits a byte stream into (header, payload) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= _FRAME.size:
            size, head = _FRAME.unpack_from(buffer, offset)
            if not head <= size - 4 < MAX_FRAME_BYTES:
                raise ValueError(f"corrupt shadow frame ({size}, {head})")
            end = offset + 4 + size
            if len(buffer) < end:
                break
            start = offset + _FRAME.size
            header = orjson.loads(bytes(buffer[start : start + head]))
            yield header, bytes(buffer[start + head : end])
            offset = end
        del buffer[:offset]


def decode_outputs(response: UpstreamResponse) -> dict[str, np.ndarray]:
    """The output tensors of a v2 (JSON or binary extension) or v1 answer."""
    if _ENCODED.search(response.headers):
        raise ValueError("compressed answers are not compared")
    found = _HEADER_LENGTH.search(response.headers)
    body = memoryview(response.body)
    size = int(found.group(1)) if found else len(body)
    if size > len(body):
        raise ValueError("Inference-Header-Content-Length runs past the body")
    document = orjson.loads(body[:size])
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    if "predictions" in document:
        return {"predictions": np.asarray(document["predictions"], dtype=np.float64)}
    outputs: dict[str, np.ndarray] = {}
    offset = size
    for item in document["outputs"]:
        name = str(item["name"])
        datatype = DATATYPES[item["datatype"]]
        shape, count = check_shape(name, item["shape"], _LIMITS)
        binary = (item.get("parameters") or {}).get("binary_data_size")
        if binary is None:
            outputs[name] = decode_values(name, datatype, shape, count, item["data"], strict=False)
        else:
            outputs[name] = decode_raw(name, datatype, shape, count, body[offset : offset + int(binary)])
            offset += int(binary)
    return outputs


def decode_grpc_outputs(payload: bytes) -> dict[str, np.ndarray]:
    """The output tensors of a serialized ``ModelInferResponse`` (raw or typed contents)."""
    pb2, _ = build_protos.load()
    try:
        response = pb2.ModelInferResponse.FromString(payload)
    except DecodeError as exc:
        raise ValueError(f"not a ModelInferResponse: {exc}") from None
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ValueError("raw_output_contents does not have one entry per output")
    outputs: dict[str, np.ndarray] = {}
    for index, item in enumerate(response.outputs):
        datatype = DATATYPES[item.datatype]
        shape, count = check_shape(item.name, list(item.shape), _LIMITS)
        if raw:
            outputs[item.name] = decode_raw(item.name, datatype, shape, count, raw[index])
        else:
            values = getattr(item.contents, datatype.grpc_field)
            outputs[item.name] = decode_values(item.name, datatype, shape, count, values)
    return outputs


def compare(live: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> tuple[dict[str, float], int, int]:
    """Per numeric output the max abs difference; argmax rows compared and equal.

    Raises ``ValueError`` when the shadow lacks an output or its shape differs,
    or a difference is not finite.
    """
    diffs: dict[str, float] = {}
    rows = equal = 0
    for name, expected in live.items():
        got = shadow.get(name)
        if got is None or got.shape != expected.shape:
            shape = None if got is None else list(got.shape)
            raise ValueError(f"output {name!r}: shadow shape {shape} != live {list(expected.shape)}")
        if expected.dtype.kind not in "biuf":
            continue  # strings: nothing numeric to compare
        diff = float(np.abs(np.subtract(expected, got, dtype=np.float64)).max()) if expected.size else 0.0
        if not math.isfinite(diff):
            raise ValueError(f"output {name!r}: the difference is not finite")
        diffs[name] = diff
        if expected.ndim == 2 and expected.shape[1] > 1:
            rows += expected.shape[0]
            equal += int(np.count_nonzero(expected.argmax(axis=1) == got.argmax(axis=1)))
    return diffs, rows, equal
