"""Wire formats: sizes checked against shapes before any buffer is read."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from inference_worker import json_body
from inference_worker.config import Limits
from inference_worker.errors import InvalidRequest, PayloadTooLarge
from inference_worker.tensor_codec import (
    DATATYPES,
    check_shape,
    datatype,
    decode_json_inputs,
    decode_raw,
    decode_values,
    json_data,
    raw_bytes,
)

LIMITS = Limits()


@pytest.mark.parametrize("name", [n for n in DATATYPES if n != "BYTES"])
def test_every_numeric_datatype_round_trips_through_raw_bytes(name: str) -> None:
    dt = DATATYPES[name]
    array = (np.arange(6) % 2).astype(dt.dtype).reshape(2, 3)
    decoded = decode_raw("t", dt, (2, 3), 6, raw_bytes(array))
    assert decoded.dtype == dt.dtype
    np.testing.assert_array_equal(decoded, array)
    np.testing.assert_array_equal(decode_values("t", dt, (2, 3), 6, array.reshape(-1).tolist()), array)


def test_raw_data_is_viewed_without_a_copy() -> None:
    raw = np.arange(4, dtype=np.float32).tobytes()
    decoded = decode_raw("t", DATATYPES["FP32"], (2, 2), 4, raw)
    assert decoded.base is not None
    assert not decoded.flags.writeable


def test_nested_json_data_is_accepted_in_row_major_order() -> None:
    decoded = decode_values("t", DATATYPES["INT32"], (2, 2), 4, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(decoded, np.array([[1, 2], [3, 4]], dtype=np.int32))


def test_bytes_elements_are_length_prefixed_utf8() -> None:
    array = np.array(["a", "", "ünï"], dtype=object)
    raw = raw_bytes(array)
    assert raw[:5] == b"\x01\x00\x00\x00a"
    assert decode_raw("s", DATATYPES["BYTES"], (3,), 3, raw).tolist() == ["a", "", "ünï"]
    assert json_data(array) == ["a", "", "ünï"]


@pytest.mark.parametrize(
    ("count", "raw", "message"),
    [
        (1, b"\x05\x00\x00\x00ab", "runs past the end"),
        (2, b"\x01\x00\x00\x00a\x01\x00\x00", "ends inside element 1"),
        (10, b"\x01\x00\x00\x00a" * 3, "cannot fit"),
        (1, b"\x01\x00\x00\x00a\x00\x00", "left over"),
        (1, b"\x01\x00\x00\x00\xff", "not valid UTF-8"),
    ],
)
def test_malformed_bytes_elements_are_refused(count: int, raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_raw("s", DATATYPES["BYTES"], (count,), count, raw)


def test_element_counts_are_bounded_before_allocation() -> None:
    with pytest.raises(PayloadTooLarge, match="exceed the limit"):
        check_shape("t", [1 << 40, 1 << 40], LIMITS)
    with pytest.raises(InvalidRequest, match="rank 9"):
        check_shape("t", [1] * 9, LIMITS)
    with pytest.raises(InvalidRequest, match="non-negative integers"):
        check_shape("t", [1, True], LIMITS)
    with pytest.raises(InvalidRequest, match="list of integers"):
        check_shape("t", "1,2", LIMITS)
    assert check_shape("t", [2, 0, 3], LIMITS) == ((2, 0, 3), 0)


@pytest.mark.parametrize(
    "shape", [[1, 1 << 62, 1 << 62, 0], [0, 1 << 40], [1 << 24, 2, 0]], ids=["2^124", "2^40", "2^25"]
)
def test_a_shape_without_elements_still_has_its_other_dimensions_bounded(shape: list[int]) -> None:
    """numpy cannot shape an array past its index range even with no element: a 400, not a 500."""
    with pytest.raises(
        InvalidRequest, match=r"its other dimensions hold \d+ elements, past the limit of 16777216"
    ):
        check_shape("t", shape, LIMITS)


def test_a_shape_without_elements_within_the_limits_decodes_to_an_empty_array() -> None:
    shape, count = check_shape("t", [0, 1 << 12, 1 << 12], LIMITS)
    assert decode_values("t", DATATYPES["FP32"], shape, count, []).shape == (0, 4096, 4096)
    assert decode_raw("t", DATATYPES["FP32"], shape, count, b"").shape == (0, 4096, 4096)
    assert decode_values("t", DATATYPES["BYTES"], shape, count, []).shape == (0, 4096, 4096)


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        ((2, 1), [["a"], ["b"]]),
        ((1, 1), [["a"]]),
        ((2, 2, 1), [[["a"], ["b"]], [["c"], ["d"]]]),
        ((2, 1), ["a", "b"]),
        ((1, 2, 2), [["a", "b"], ["c", "d"]]),
        ((2, 0), [[], []]),
    ],
)
def test_bytes_data_nested_as_its_shape_decodes_as_flat_data_does(
    shape: tuple[int, ...], data: list[object]
) -> None:
    count = int(np.prod(shape))
    decoded = decode_values("s", DATATYPES["BYTES"], shape, count, data)
    assert decoded.shape == shape
    assert decoded.reshape(-1).tolist() == ["a", "b", "c", "d"][:count]


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        ((2, 1), [["a"], "b"], "not a regular nesting of lists"),
        ((2, 1), ["a", ["b"]], "not a regular nesting of lists"),
        ((2, 2), [["a", "b"], ["c"]], "not a regular nesting of lists"),
        ((1, 1), [[["a"]]], "not a regular nesting of lists"),
        ((2,), [["a", "b"]], r"shape \[2\] needs 2 elements, data holds 1"),
        ((3, 1), [["a"], ["b"]], r"shape \[3, 1\] needs 3 elements, data holds 2"),
        ((1, 1), [[1]], "BYTES data must hold strings"),
    ],
)
def test_bytes_data_nested_unlike_its_shape_is_refused(
    shape: tuple[int, ...], data: list[object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_values("s", DATATYPES["BYTES"], shape, int(np.prod(shape)), data)


def test_a_raw_buffer_of_the_wrong_size_is_refused_before_it_is_read() -> None:
    with pytest.raises(InvalidRequest, match="needs 16 bytes of data, got 15"):
        decode_raw("x", DATATYPES["FP32"], (1, 4), 4, b"\0" * 15)


def test_json_inputs_mix_inline_and_binary_tensors_in_order() -> None:
    binary = memoryview(np.arange(2, dtype=np.int64).tobytes() + np.ones(3, dtype=np.float32).tobytes())
    inputs = [
        {"name": "a", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "c", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 12}},
    ]
    decoded = decode_json_inputs(inputs, binary, LIMITS)
    assert decoded["a"].tolist() == [0, 1]
    assert decoded["b"].tolist() == [True, False]
    assert decoded["c"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "a", "datatype": "FP32", "shape": [1]}], "neither 'data' nor a binary_data_size"),
        ([{"name": "a", "datatype": "FP32", "shape": [1], "data": 1.5}], "data must be a list"),
        ([{"name": "a", "datatype": "FP32", "shape": [1], "data": "1.5"}], "data must be a list"),
        ([{"name": "a", "datatype": "INT8", "shape": [1], "data": [300]}], "outside the range of INT8"),
        ([{"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1.0], [2.0, 3.0]]}], "regular shape"),
        ([{"name": "", "datatype": "FP32", "shape": [1], "data": [1]}], "'name' string"),
        ([{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}] * 2, "appears twice"),
        (
            [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": -1}}],
            "non-negative",
        ),
        (
            [
                {
                    "name": "a",
                    "datatype": "FP32",
                    "shape": [1],
                    "data": [1],
                    "parameters": {"binary_data_size": 4},
                }
            ],
            "both 'data' and a binary_data_size parameter",
        ),
        (["a"], "must be an object"),
        ({"a": 1}, "non-empty list"),
    ],
)
def test_malformed_json_inputs_are_refused_with_their_reason(inputs: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_json_inputs(inputs, None, LIMITS)


def test_binary_data_left_after_the_last_input_is_refused() -> None:
    inputs = [{"name": "a", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": 1}}]
    with pytest.raises(InvalidRequest, match="1 bytes of binary data follow"):
        decode_json_inputs(inputs, memoryview(b"\x01\x02"), LIMITS)


def test_unknown_datatypes_name_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match="'BF16'; expected one of BOOL"):
        datatype("BF16")


@pytest.mark.parametrize(
    ("name", "shape", "data", "message"),
    [
        ("FP32", [2], [1.0, None], "FP32 data must hold numbers; it holds null"),
        ("FP32", [2], ["1.5", 2.0], "FP32 data must hold numbers; it holds a string"),
        ("FP64", [2], [True, 2.0], "FP64 data must hold numbers; it holds a boolean"),
        ("FP16", [1, 2], [[1.0, {}]], "FP16 data must hold numbers; it holds an object"),
        ("INT32", [2], [1, 1.5], "INT32 data must hold integers; it holds a number with a fraction"),
        ("INT64", [2, 1], [[1], [None]], "INT64 data must hold integers; it holds null"),
        ("UINT8", [2], [1.0, -1.0], "outside the range of UINT8"),
        ("FP32", [2], [1e39, 1.0], "outside the range of FP32"),
        ("FP32", [1, 2], [[1.0, -1e39]], "outside the range of FP32"),
        ("FP16", [2], [70000, 1.0], "outside the range of FP16"),
        ("BOOL", [2], [True, "false"], "BOOL data must hold true or false; it holds a string"),
        ("BOOL", [2], [True, 0], "BOOL data must hold true or false; it holds an integer"),
        ("FP32", [2], [[1.0], [[2.0]]], "nests lists deeper than its shape has dimensions"),
    ],
)
def test_json_values_a_datatype_does_not_take_are_refused_not_converted(
    name: str, shape: list[int], data: list[object], message: str
) -> None:
    """numpy would make null NaN, "1.5" 1.5, 1.5 the integer 1 and "false" True: each is a 400."""
    inputs = [{"name": "a", "datatype": name, "shape": shape, "data": data}]
    with pytest.raises(InvalidRequest, match=message):
        decode_json_inputs(inputs, None, LIMITS)


def test_a_number_past_fp32s_range_in_a_large_body_is_refused_not_made_inf() -> None:
    """The simdjson path hands an overflowing array back to the old one, which refuses it too."""
    body = orjson.dumps(
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [3000], "data": [0.5] * 2999}]}
    )
    body = body.replace(b"0.5]", b"0.5,1e39]")
    with pytest.raises(InvalidRequest, match="outside the range of FP32"):
        decode_json_inputs(json_body.loads(body)["inputs"], None, LIMITS)
    largest = body.replace(b"1e39", b"3.4e38")
    assert decode_json_inputs(json_body.loads(largest)["inputs"], None, LIMITS)["a"][-1] == np.float32(3.4e38)


def test_whole_numbers_written_with_a_fraction_fill_integer_tensors() -> None:
    decoded = decode_json_inputs(
        [{"name": "a", "datatype": "INT64", "shape": [3], "data": [1, 2.0, -3.0]}], None, LIMITS
    )
    np.testing.assert_array_equal(decoded["a"], np.array([1, 2, -3], dtype=np.int64))
    floats = decode_json_inputs(
        [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1, 2.5]}], None, LIMITS
    )
    np.testing.assert_array_equal(floats["a"], np.array([1.0, 2.5], dtype=np.float32))


def test_data_nested_past_the_shape_is_refused_without_walking_it() -> None:
    deep: list[object] = [1.0]
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    with pytest.raises(InvalidRequest, match="nests lists deeper"):
        decode_values("a", DATATYPES["FP32"], (1, 1), 1, deep)


def test_large_arrays_that_leave_the_fast_path_are_checked_too() -> None:
    """A CNN-sized body goes through json_body's simdjson path; a null sends it back to orjson's
    list, and an integer tensor's values always take that list: both are checked."""
    values = [0.5] * 4096
    nulls = orjson.dumps(
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [4097], "data": [*values, None]}]}
    )
    with pytest.raises(InvalidRequest, match="it holds null"):
        decode_json_inputs(json_body.loads(nulls)["inputs"], None, LIMITS)
    fraction = orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [4096], "data": values}]})
    with pytest.raises(InvalidRequest, match="a number with a fraction"):
        decode_json_inputs(json_body.loads(fraction)["inputs"], None, LIMITS)
