"""Hand-made protobuf bytes, checked against the generated messages (no server)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference_worker import build_protos, pb_wire
from inference_worker.tensor_codec import raw_bytes


@pytest.fixture(scope="module")
def pb2() -> Any:
    return build_protos.load()[0]


def reference(
    pb2: Any, name: str, version: str, request_id: str, outputs: list[tuple[str, str, np.ndarray]]
) -> Any:
    response = pb2.ModelInferResponse(model_name=name, model_version=version, id=request_id)
    for output, datatype, array in outputs:
        response.outputs.add(name=output, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(raw_bytes(array))
    return response


SIGNATURE = [("logits", "FP32"), ("classe", "INT64"), ("état", "FP64")]
ARRAYS: list[np.ndarray] = [
    np.arange(20, dtype=np.float32).reshape(2, 10),
    np.array([3, 1], dtype=np.int64),
    np.ones((1, 0, 300), dtype=np.float64),
]


@pytest.mark.parametrize(
    ("version", "request_id", "indices"),
    [
        ("1", "", [0, 1, 2]),  # every output, no id
        ("", "r-7", [2, 0]),  # a subset, in the client's order; no version
        ("12", "ïd", [1]),
        ("1", "x" * 200, []),
    ],
)
def test_infer_responses_are_the_bytes_protobuf_writes(
    pb2: Any, version: str, request_id: str, indices: list[int]
) -> None:
    encoder = pb_wire.InferResponseEncoder("clf", version, SIGNATURE)
    for _ in range(2):  # the second time from the cached shapes
        data = encoder.encode(request_id, [(i, ARRAYS[i], raw_bytes(ARRAYS[i])) for i in indices])
        expected = reference(pb2, "clf", version, request_id, [(*SIGNATURE[i], ARRAYS[i]) for i in indices])
        assert data == expected.SerializeToString()
        assert pb2.ModelInferResponse.FromString(data) == expected


def test_a_scalar_output_has_no_shape_and_a_large_one_long_varints(pb2: Any) -> None:
    encoder = pb_wire.InferResponseEncoder("m", "1", [("y", "FP32")])
    scalar = np.array(1.5, dtype=np.float32)
    assert encoder.encode("", [(0, scalar, raw_bytes(scalar))]) == (
        reference(pb2, "m", "1", "", [("y", "FP32", scalar)]).SerializeToString()
    )
    big = np.zeros((1, 70000), dtype=np.uint8)  # a three-byte dimension, 70 KB of contents
    decoded = pb2.ModelInferResponse.FromString(encoder.encode("", [(0, big, raw_bytes(big))]))
    assert list(decoded.outputs[0].shape) == [1, 70000]
    assert decoded.raw_output_contents[0] == bytes(70000)


def test_stream_answers_wrap_a_response_or_carry_an_error_message(pb2: Any) -> None:
    response = pb2.ModelInferResponse(model_name="clf", id="7")
    wrapped = pb2.ModelStreamInferResponse.FromString(pb_wire.stream_response(response.SerializeToString()))
    assert wrapped.infer_response == response
    assert wrapped.error_message == ""
    error = pb2.ModelStreamInferResponse.FromString(pb_wire.stream_error("unknown deployment 'nope'"))
    assert error.error_message == "unknown deployment 'nope'"
    assert not error.HasField("infer_response")


def test_a_stream_error_carries_the_id_of_the_request_that_failed_as_tritons_does(pb2: Any) -> None:
    encoded = pb_wire.stream_error("input 'x' has shape [1, 5]", "req-42")

    assert (
        encoded
        == pb2.ModelStreamInferResponse(
            error_message="input 'x' has shape [1, 5]", infer_response=pb2.ModelInferResponse(id="req-42")
        ).SerializeToString()
    )


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16384, 2**31, 2**63 - 1])
def test_varints_encode_as_protobuf_does(pb2: Any, value: int) -> None:
    encoded = pb2.InferParameter(int64_param=value).SerializeToString()  # field 2 of a oneof: tag 0x10
    assert encoded == b"\x10" + pb_wire.varint(value)
