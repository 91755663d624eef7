"""JSON bodies whose large numeric arrays never become Python floats.

``orjson.loads`` turns a CNN input of 12,288 floats (a 250 KB body) into as many Python floats,
which ``np.fromiter`` then copies into the tensor: about half a millisecond of the event loop
per request. ``loads`` cuts each ``"data": [...]`` array of at least ``MIN_ARRAY_BYTES`` out of
the body (and a KServe v1 body's ``instances`` when they come first), flat or nested as
``array.tolist()`` writes it (``[[...], [...]]``), parses it with simdjson straight into a
float64 buffer (``NumericData``, with the nesting's dimensions), and lets orjson parse the rest of
the body, where a placeholder number stands in for the array.

The answer is exactly orjson's, and so are the errors, because anything unusual goes back to
``orjson.loads`` of the whole body:
- an array simdjson refuses (bad JSON, NaN, a big integer, a string, ``true``, ``null``...), a
  nesting that is not regular (rows of different lengths, numbers beside rows, rows deeper in one
  place than another) or that does not start with its whole depth of brackets (``[ [``) stays in
  the body for orjson;
- the placeholders must parse, each must be found once as the ``data`` of an input (or as the
  ``instances``) and nowhere else in the text (so an array found inside a string, an escaped
  ``"d\\u0061ta"`` key, or a duplicate key all end on the old path);
- the numbers themselves: JSON numbers are parsed to the nearest double by both parsers, and
  integers beyond 64 bits, which orjson reads as floats, are refused by simdjson.
``NumericData.cast`` then gives the tensor for the float datatypes when every value fits, and the
tensor codec takes it when the nesting's dimensions are the input's shape (or the data is flat);
anything else (integer datatypes, overflow, another nesting) decodes ``as_list()``, orjson's own
list, as before.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any, Final

import numpy as np
import orjson
import simdjson

MIN_ARRAY_BYTES: Final = 8192
"""Smaller arrays stay with orjson: cutting them out costs more than it saves."""

_DATA_KEY: Final = b'"data"'
_COLON_BRACKETS: Final = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*(\[+)")
_INSTANCES: Final = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"instances"[ \t\n\r]*:[ \t\n\r]*(\[+)')
_PLACEHOLDER: Final = 8_271_941_636_507_226_101
"""The first placeholder number (one more per array): fits in int64, so orjson reads an int."""
_OPEN_BRACKET: Final = ord("[")
_PARSE_ERRORS: Final = (ValueError, TypeError, RuntimeError, KeyError, IndexError, MemoryError)
_LIMITS: Final = {np.dtype(t): float(np.finfo(t).max) for t in ("<f2", "<f4")}

_local = threading.local()


class NumericData:
    """A JSON array of numbers cut out of a body: its text, its values as float64 (flat, row-major)
    and the dimensions of its nesting (one for a flat array)."""

    __slots__ = ("dims", "text", "values")

    def __init__(self, text: bytes, values: np.ndarray, dims: tuple[int, ...]) -> None:
        self.text = text
        self.values = values
        self.dims = dims

    def __len__(self) -> int:
        return int(self.values.size)

    def as_list(self) -> Any:
        """The list ``orjson.loads`` gives for the array: the old path, with its errors."""
        return orjson.loads(self.text)

    def cast(self, dtype: np.dtype[Any]) -> np.ndarray | None:
        """The values as ``dtype``, equal to ``np.fromiter(self.as_list(), dtype)``, or None
        where they might not be (not a float dtype; a value the cast would overflow)."""
        if dtype.kind != "f":
            return None
        values = self.values
        if dtype.itemsize == 8:
            return values
        limit = _LIMITS.get(dtype)
        if limit is None or values.max() > limit or values.min() < -limit:
            return None  # numpy would write inf: the old path refuses the value, as for a short body
        return values.astype(dtype)


def loads(body: bytes) -> Any:
    """``orjson.loads(body)``, with the large numeric ``data`` of each input (and a v1 body's
    ``instances``) as a ``NumericData``; raises ``orjson.JSONDecodeError`` exactly where orjson does."""
    if len(body) < MIN_ARRAY_BYTES:
        return orjson.loads(body)
    pieces: list[bytes] = []
    arrays: dict[int, NumericData] = {}
    done = 0
    spans = _instances(body)
    for start, end, depth in [*spans, *_data_arrays(body, spans[0][1] if spans else 0)]:
        data = _parse(body[start:end], depth)
        if data is None:
            continue
        token = _PLACEHOLDER + len(arrays)
        arrays[token] = data
        pieces += [body[done:start], b"%d" % token]
        done = end
    if not arrays:
        return orjson.loads(body)
    pieces.append(body[done:])
    text = b"".join(pieces)
    try:
        header = orjson.loads(text)
    except orjson.JSONDecodeError:
        return orjson.loads(body)  # the same error, from the same parser
    if not _attach(header, text, arrays):
        return orjson.loads(body)
    return header


def _instances(body: bytes) -> list[tuple[int, int, int]]:
    """Where a KServe v1 body's ``instances`` array starts and ends, and how many brackets open it,
    when it is the body's first key (as clients write it; elsewhere it stays with orjson, which
    spares every v2 body a search for the word)."""
    match = _INSTANCES.match(body)
    if match is None:
        return []
    start, depth = match.start(1), match.end(1) - match.start(1)
    end = _end(body, start, depth)
    return [(start, end, depth)] if end - start >= MIN_ARRAY_BYTES else []


def _end(body: bytes, start: int, depth: int) -> int:
    """Where an array opened by ``depth`` brackets at ``start`` ends, or -1 (a guess ``_parse``
    verifies): a flat one at the first closing bracket; a nested one at the last ``depth`` closing
    ones before the next quote (numbers hold none; memchr finds it, and a search back from it stops
    within a few bytes)."""
    if depth == 1:
        end = body.find(b"]", start)
        return end + 1 if end >= 0 else -1
    quote = body.find(b'"', start)
    end = body.rfind(b"]" * depth, start, len(body) if quote < 0 else quote)
    return end + depth if end >= 0 else -1


def _data_arrays(body: bytes, pos: int = 0) -> list[tuple[int, int, int]]:
    """Where each ``"data": [...]`` array of at least ``MIN_ARRAY_BYTES`` starts and ends, and how
    many brackets open it (a guess the caller verifies: it may be inside a string, and its nesting
    is checked as it is parsed), from ``pos`` on. A flat array holds no other bracket."""
    found = []
    while (key := body.find(_DATA_KEY, pos)) >= 0:
        pos = key + len(_DATA_KEY)
        match = _COLON_BRACKETS.match(body, pos)
        if match is None:
            continue
        start, depth = match.start(1), match.end(1) - match.start(1)
        end = _end(body, start, depth)
        if end < 0:
            if depth == 1:
                break  # no closing bracket left in the body
            continue
        if end - start >= MIN_ARRAY_BYTES and (depth > 1 or body.find(b"[", start + 1, end) < 0):
            found.append((start, end, depth))
            pos = end
        else:  # search on from the next quote: memchr crosses a nested array of numbers at once
            pos = body.find(b'"', start)
            if pos < 0:
                break
    return found


def _parse(text: bytes, depth: int) -> NumericData | None:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        document = parser.parse(text)
        if not isinstance(document, simdjson.Array):
            return None
        dims = _dims(document, depth)
        if dims is None:
            return None
        buffer = document.as_buffer(of_type="d")  # flattens the nesting; refuses anything not a number
    except _PARSE_ERRORS:
        return None
    values = np.frombuffer(buffer, dtype=np.float64)
    if not values.size or values.size != math.prod(dims):
        return None
    if depth > 1 and _brackets(text) != 1 + sum(math.prod(dims[:level]) for level in range(1, depth)):
        return None  # a row holds a deeper array somewhere: not the nesting the dimensions say
    return NumericData(text, values, dims)


def _brackets(text: bytes) -> int:
    """How many ``[`` the text holds (numpy's comparison: a third of ``bytes.count``'s time)."""
    return int(np.count_nonzero(np.frombuffer(text, dtype=np.uint8) == _OPEN_BRACKET))


def _dims(document: simdjson.Array, depth: int) -> tuple[int, ...] | None:
    """The lengths of a regular nesting ``depth`` deep, level by level, or None: the rows of each
    level are arrays of one length (the numbers of the last level are counted by the caller)."""
    dims = []
    level: list[object] = [document]
    for index in range(depth):
        first = level[0]
        if not isinstance(first, simdjson.Array):
            return None
        size = len(first)
        if not all(isinstance(row, simdjson.Array) and len(row) == size for row in level):
            return None
        dims.append(size)
        if index + 1 < depth:
            level = [item for row in level for item in row]  # type: ignore[attr-defined]
            if not level:
                return None
    return tuple(dims)


def _attach(header: object, text: bytes, arrays: dict[int, NumericData]) -> bool:
    """Put each array where its placeholder was parsed, found once in the text: as the ``data`` of
    an input, or as a v1 body's ``instances``."""
    if not isinstance(header, dict):
        return False
    pending = dict(arrays)
    instances = header.get("instances")
    if type(instances) is int and instances in pending:
        header["instances"] = pending.pop(instances)
    inputs = header.get("inputs")
    for item in inputs if isinstance(inputs, list) else ():
        data = item.get("data") if isinstance(item, dict) else None
        if type(data) is int and data in pending:
            item["data"] = pending.pop(data)
    return not pending and all(text.count(b"%d" % token) == 1 for token in arrays)
