"""Large numeric JSON data without Python floats: exactly what orjson and numpy decode, errors too.

Each body is decoded twice, by ``orjson.loads`` (the old path) and by ``json_body.loads``, then
by ``decode_json_inputs``; the tensors must be equal bit for bit and a refusal must be the same
exception with the same message.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from inference_worker import json_body
from inference_worker.config import Limits
from inference_worker.json_body import MIN_ARRAY_BYTES, NumericData
from inference_worker.tensor_codec import decode_json_inputs

LIMITS = Limits()
NUMERIC = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "UINT64", "BOOL"]
PLACEHOLDER = b"8271941636507226101"
EXOTIC = [
    "1e-45",
    "-1e-45",
    "7e-46",
    "1.4e-45",
    "-0.0",
    "-0",
    "0",
    "0.0",
    "1E+38",
    "3.4028235e38",
    "3.4028234663852886e38",
    "-3.4028235e38",
    "1e-38",
    "1.17549435e-38",
    "65504",
    "65519.99",
    "6e-8",
    "5.960464477539063e-8",
    "9007199254740993",
    "18446744073709551615",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "4.9e-324",
    "1e-400",
    "100000000000000000000000e-50",
    "0.000000000000000000000000000001",
    "123456789012345678",
    "0.1",
    "0.30000000000000004",
    "1E5",
    "1e+5",
    "2.5",
    "-2.5",
    "255",
    "256",
]
OVERFLOW = [
    "3.4028235677973362e38",
    "3.4028236e38",
    "1e39",
    "-1e39",
    "65520",
    "1e300",
    "1.7976931348623157e308",
]
INVALID = [
    "NaN",
    "Infinity",
    "-Infinity",
    "01",
    "1.",
    ".5",
    "+1",
    "1e",
    "0x10",
    "1e400",
    "2e308",
    "-",
    "123456789012345678901234567890",
    "-9223372036854775809",
    "18446744073709551616",
    "true",
    "false",
    "null",
    '"1.5"',
    "[1]",
    "{}",
    "1 2",
    "/* c */ 1",
]


def _decode(loads: Callable[[bytes], Any], body: bytes) -> tuple[object, ...]:
    """What a request sees: the tensors (dtype, shape, bytes) or the exception and its message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's overflow warning counts as an outcome too
            header = loads(body)
            decoded = decode_json_inputs(header["inputs"], None, LIMITS)
    except Exception as error:  # the outcome compared, whatever it is
        return ("error", type(error).__name__, str(error))
    return (
        "ok",
        [
            (n, a.dtype.str, a.shape, a.tolist() if a.dtype.kind == "O" else a.tobytes())
            for n, a in decoded.items()
        ],
    )


def _assert_same(body: bytes) -> tuple[object, ...]:
    old = _decode(orjson.loads, body)
    assert _decode(json_body.loads, body) == old
    return old


def _number(rng: random.Random, plain: bool) -> str:
    kind = rng.random() * (0.5 if plain else 1.0)
    if kind < 0.5:  # what json.dumps writes for a float32 sample
        return repr(float(np.float32(rng.gauss(0, 10 ** rng.randint(-3, 3)))))
    if kind < 0.6:
        return str(rng.randint(-(10 ** rng.randint(1, 18)), 10 ** rng.randint(1, 18)))
    if kind < 0.7:
        return rng.choice(EXOTIC)
    if kind < 0.85:  # a float32 midpoint: where rounding twice could differ from rounding once
        a = np.float32(rng.uniform(-1e4, 1e4))
        return repr((float(a) + float(np.nextafter(a, np.float32(np.inf)))) / 2)
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25))).lstrip("0") or "0"
    point = rng.randint(1, len(digits))  # a point (or an exponent) below: never an integer past 64 bits
    mantissa = (
        digits if point == len(digits) and len(digits) < 19 else f"{digits[:point]}.{digits[point:] or '0'}"
    )
    exponent = (
        f"{rng.choice('eE')}{rng.choice(['', '+', '-'])}{rng.randint(0, 60)}" if rng.random() < 0.5 else ""
    )
    return rng.choice(["", "-"]) + mantissa + exponent


def _array(rng: random.Random, count: int, spoil: float) -> str:
    plain = rng.random() < 0.5  # float32 samples only, as clients send them; or every kind of number
    items = [_number(rng, plain) for _ in range(count)]
    if rng.random() < spoil:
        items[rng.randrange(count)] = rng.choice(INVALID + OVERFLOW)
    separator = rng.choice([",", ", ", " , ", ",\n\t", "\r\n,"])
    return "[" + rng.choice(["", " ", "\n"]) + separator.join(items) + rng.choice(["", " ", "\t"]) + "]"


def _body(rng: random.Random) -> bytes:
    inputs = []
    for index in range(rng.choice([1, 1, 1, 2, 3])):
        count = rng.choice([3, 700, 1500, 4000])
        shape = [count] if rng.random() < 0.8 else [1, count]
        if rng.random() < 0.1:
            shape = [count + rng.choice([-1, 1])]  # the wrong element count
        datatype = rng.choice(["FP32"] * 4 + NUMERIC)
        data = _array(rng, count, spoil=0.3)
        if rng.random() < 0.1 and count % 2 == 0:  # nested rows
            half = count // 2
            data = f"[{_array(rng, half, 0.0)}, {_array(rng, half, 0.0)}]"
            shape = [2, half]
        shape_text = orjson.dumps(shape).decode()
        inputs.append(
            f'{{"name": "i{index}", "shape": {shape_text}, "datatype": "{datatype}", "data": {data}}}'
        )
    return ('{"id": "r", "inputs": [' + ", ".join(inputs) + "]}").encode()


@pytest.mark.parametrize("seed", range(8))
def test_generated_bodies_decode_exactly_as_orjson_and_numpy_do(seed: int) -> None:
    rng = random.Random(seed)
    bodies = [_body(rng) for _ in range(40)]
    outcomes = [_assert_same(body)[0] for body in bodies]
    assert "ok" in outcomes
    assert "error" in outcomes
    assert any(_takes_the_fast_path(body) for body in bodies)


def _takes_the_fast_path(body: bytes) -> bool:
    try:
        header = json_body.loads(body)
    except orjson.JSONDecodeError:
        return False
    return any(isinstance(item.get("data"), NumericData) for item in header["inputs"])


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16"])
def test_exotic_number_spellings_give_the_old_values_bit_for_bit(datatype: str) -> None:
    tokens = (EXOTIC * 40)[:1200]
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [len(tokens)], "datatype": datatype, "data": [0]}]}
    )
    body = body.replace(b"[0]", ("[" + ",".join(tokens) + "]").encode())
    header = json_body.loads(body)
    assert isinstance(header["inputs"][0]["data"], NumericData)  # the fast path was taken
    if datatype != "FP16":  # 3.4e38 overflows FP16: that one goes back to the old path
        assert _assert_same(body)[0] == "ok"


@pytest.mark.parametrize("token", OVERFLOW + INVALID)
def test_a_number_the_old_path_refuses_or_overflows_or_rounds_to_the_limit_gives_the_same_answer(
    token: str,
) -> None:
    for datatype in ("FP32", "FP16", "FP64", "INT32"):
        data = "[" + ",".join(["0.5"] * 3000 + [token]) + "]"
        body = f'{{"inputs": [{{"name": "x", "shape": [3001], "datatype": "{datatype}", "data": {data}}}]}}'
        _assert_same(body.encode())


def _big(value: str = "0.25", count: int = 3000) -> str:
    return "[" + ",".join([value] * count) + "]"


def _input(data: str, datatype: str = "FP32", count: int = 3000, name: str = "x", key: str = "data") -> str:
    return f'{{"name": "{name}", "shape": [{count}], "datatype": "{datatype}", "{key}": {data}}}'


def _request(*inputs: str, before: str = "", after: str = "") -> str:
    return f'{{{before}"inputs": [{", ".join(inputs)}]{after}}}'


BIG, ESCAPED, SMALL = _big(), "d\\u0061ta", _input("[1]", count=1)
HOSTILE = {
    "duplicate data keys: the last wins": _request(_input(f'{_big("1.5")}, "data": {_big("2.5")}')),
    "an escaped key after the plain one": _request(_input(f'{_big("1.5")}, "{ESCAPED}": {_big("2.5")}')),
    "an escaped key before the plain one": _request(
        _input(f'{_big("1.5")}, "data": {_big("2.5")}', key=ESCAPED)
    ),
    "an escaped key only": _request(_input(BIG, key=ESCAPED)),
    "the placeholder sent as another input's data": _request(
        _input(f'{BIG}, "{ESCAPED}": {_big("0.5")}'),
        _input(PLACEHOLDER.decode(), "INT64", 1, "y", ESCAPED),
    ),
    "the placeholder inside other data": _request(
        _input(BIG), _input(f"[{PLACEHOLDER.decode()}]", "INT64", 1, "y")
    ),
    "data inside parameters": _request(SMALL, before=f'"parameters": {{"data": {BIG}}}, '),
    "data at the top": _request(SMALL, before=f'"data": {BIG}, '),
    "data in a string": _request(SMALL, before=f'"id": "\\"data\\": {BIG}", '),
    "data in a broken string": _request(SMALL, before=f'"id": "a "data": {BIG}", '),
    "a comment inside the array": _request(_input(f"[/* c */ {BIG[1:]}")),
    "a comment after the array": _request(_input(f"{BIG} /* c */")),
    "whitespace everywhere": _request(_input(f"\t\r\n {BIG} \n").replace(" ", " \n ")),
    "form feed is not JSON whitespace": _request(_input(f"[\f{BIG[1:]}")),
    "an unclosed array": _request(_input(BIG[:-1]))[:-4],
    "trailing garbage": _request(_input(BIG)) + " x",
    "a trailing comma": _request(_input(f"{BIG[:-1]},]")),
    "digits glued after the array": _request(_input(f"{BIG}5")),
    "a minus before the array": _request(_input(f"-{BIG}")),
    "deep nesting beside the data": _request(_input(BIG), before=f'"x": {"[" * 2000}{"]" * 2000}, '),
    "deeply nested data": _request(_input("[" * 600 + BIG + "]" * 600)),
    "irregular nesting": _request(_input(f"[{BIG}, {_big(count=2999)}, [1]]", count=6000)),
    "strings in numeric data": _request(_input(f'["1.5", {BIG[1:]}', count=3001)),
    "BYTES data": _request(_input(_big('"ab"'), "BYTES")),
    "numbers for BYTES": _request(_input(BIG, "BYTES")),
    "too few elements": _request(_input(BIG, count=3001)),
    "booleans": _request(_input(_big("true"))),
    "integers for INT8 that overflow": _request(_input(_big("300"), "INT8")),
    "floats for INT32": _request(_input(_big("1.5"), "INT32")),
    "a body that is an array": f'[{{"data": {BIG}}}]',
    "inputs as an object": f'{{"inputs": {{"name": "x", "data": {BIG}}}}}',
    "an input that is not an object": _request(_input(BIG), "5"),
    "empty data beside large data": _request(_input("[]", count=0), _input(BIG, "FP64", name="y")),
    "invalid UTF-8 after the data": _request(_input(BIG), after=', "id": "\xff"'),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_bodies_get_the_old_answer(body: str) -> None:
    _assert_same(body.encode("latin-1"))


def test_the_placeholder_never_leaks_into_the_header() -> None:
    body = HOSTILE["the placeholder sent as another input's data"].encode()
    assert _assert_same(body) == ("error", "InvalidRequest", "input 'y': data must be a list")


def test_large_flat_data_takes_the_fast_path_and_small_data_stays_with_orjson() -> None:
    values = np.random.default_rng(0).standard_normal(3 * 64 * 64).astype(np.float32)
    big = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": values}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    small = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [64], "datatype": "FP32", "data": values[:64].tolist()}]}
    )
    assert len(small) < MIN_ARRAY_BYTES < len(big)
    header = json_body.loads(big)
    assert isinstance(header["inputs"][0]["data"], NumericData)
    assert header == {
        **header,
        "inputs": [
            {"name": "x", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": header["inputs"][0]["data"]}
        ],
    }
    decoded = decode_json_inputs(header["inputs"], None, LIMITS)["x"]
    assert decoded.dtype == np.float32
    assert decoded.tobytes() == values.tobytes()
    assert json_body.loads(small) == orjson.loads(small)


def _nested_input(data: str, shape: list[int], datatype: str = "FP32") -> bytes:
    return _request(
        f'{{"name": "x", "shape": {orjson.dumps(shape).decode()}, "datatype": "{datatype}", "data": {data}}}'
    ).encode()


def test_nested_data_as_tolist_writes_it_takes_the_fast_path_with_its_dimensions() -> None:
    values = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": values.tolist()}]}
    )
    data = json_body.loads(body)["inputs"][0]["data"]
    assert isinstance(data, NumericData)
    assert data.dims == (1, 3, 64, 64)
    assert _assert_same(body)[0] == "ok"
    decoded = decode_json_inputs(json_body.loads(body)["inputs"], None, LIMITS)["x"]
    assert decoded.tobytes() == values.tobytes()


ROW = "[" + ",".join(["0.5"] * 1000) + "]"
SHORT = "[" + ",".join(["0.5"] * 999) + "]"
INTS = "[" + ",".join(["7"] * 3000) + "]"
NESTED = {
    # name: (data, shape, whether the fast path may take it)
    "regular rows": (f"[{ROW},{ROW},{ROW}]", [3, 1000], True),
    "regular rows, a flat shape": (f"[{ROW},{ROW},{ROW}]", [3000], False),
    "regular rows, another shape of the same count": (f"[{ROW},{ROW},{ROW}]", [1000, 3], False),
    "rows of different lengths": (f"[{ROW},{ROW},{SHORT}]", [3, 1000], False),
    "a row one deeper at its end, same count": (f"[{ROW},{ROW},{ROW[:-4]}[0.5]]]", [3, 1000], False),
    "a row one deeper at its start, same count": (f"[{ROW},{ROW},[[0.5],{ROW[5:]}]", [3, 1000], False),
    "a row holding an empty row": (f"[{ROW},{ROW},[{ROW[1:-1]},[]]]", [3, 1000], False),
    "a number beside the rows": (f"[{ROW},{ROW},0.5]", [3, 1000], False),
    "rows then a deeper closing": (f"[[{ROW}],[{ROW}],{ROW}]", [3, 1, 1000], False),
    "an empty first row": (f"[[],{ROW},{ROW}]", [3, 1000], False),
    "a space between the brackets": (f"[ {ROW},{ROW},{ROW}]", [3, 1000], False),
    "null in a row": (f"[{ROW},{ROW},{ROW[:-4]}null]]", [3, 1000], False),
    "three levels": (f"[[{ROW},{ROW}],[{ROW},{ROW}]]", [2, 2, 1000], True),
    "three levels, uneven in the middle": (f"[[{ROW},{ROW}],[{ROW}]]", [2, 2, 1000], False),
    "integers for INT32 rows": (f"[{INTS},{INTS}]", [2, 3000], True),
}


@pytest.mark.parametrize(("data", "shape", "fast"), NESTED.values(), ids=NESTED.keys())
def test_nested_data_gets_the_old_answer_and_only_a_regular_nesting_is_cut_out(
    data: str, shape: list[int], fast: bool
) -> None:
    body = _nested_input(data, shape, "INT32" if "7" in data else "FP32")
    _assert_same(body)
    header = json_body.loads(body)
    cut = header["inputs"][0]["data"]
    if fast:
        assert isinstance(cut, NumericData)
        assert cut.dims == tuple(shape)
    elif isinstance(cut, NumericData):  # cut out, but its dimensions send it to the old path
        assert cut.dims != tuple(shape)


def test_each_of_several_nested_inputs_is_cut_out_whatever_follows_it() -> None:
    rows = f"[{ROW},{ROW},{ROW}]"
    first = f'{{"name": "a", "shape": [3, 1000], "datatype": "FP32", "data": {rows}, "parameters": {{}}}}'
    second = f'{{"datatype": "FP64", "data": {rows}, "shape": [3, 1000], "name": "b"}}'
    body = _request(first, second, after=', "outputs": [{"name": "y"}]').encode()
    assert _assert_same(body)[0] == "ok"
    inputs = json_body.loads(body)["inputs"]
    assert [item["data"].dims for item in inputs] == [(3, 1000), (3, 1000)]


def test_a_v1_body_whose_first_key_is_instances_has_them_cut_out_with_their_dimensions() -> None:
    values = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    body = orjson.dumps({"instances": values.tolist(), "parameters": {"p": 1}})
    header = json_body.loads(body)
    instances = header["instances"]
    assert isinstance(instances, NumericData)
    assert instances.dims == (2, 3, 32, 32)
    cast = instances.cast(np.dtype(np.float32))
    assert cast is not None
    assert cast.tobytes() == values.tobytes()
    assert {**header, "instances": orjson.loads(body)["instances"]} == orjson.loads(body)
    second = orjson.dumps({"signature_name": "x", "instances": values.tolist()})
    assert json_body.loads(second) == orjson.loads(second)  # elsewhere: orjson's list
    ragged = b'{"instances": [' + ROW.encode() + b"," + SHORT.encode() + b"]}"
    assert json_body.loads(ragged) == orjson.loads(ragged)
