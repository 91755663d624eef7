"""What a v2 JSON ``data`` list may hold for each datatype, checked before numpy converts it.

numpy converts what JSON allows beside numbers without a word: null becomes NaN (and the answer
holds nulls), ``"1.5"`` 1.5 and ``true`` 1.0 in a float tensor, 1.5 becomes 1 in an integer one,
``"false"`` True in a BOOL one. The tensor codec calls ``check_json_values`` on every JSON list it
decodes (flat ones in one pass in C: ``set(map(type, data))``); large arrays that ``json_body``
parsed with simdjson hold numbers only and skip it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import numpy as np

from inference_worker.errors import InvalidRequest

_JSON_TYPES: Final[dict[str, frozenset[type]]] = {
    "f": frozenset({float, int}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "b": frozenset({bool}),
}
"""What a JSON ``data`` list may hold, by numpy kind (orjson reads a JSON number as int or float)."""
_JSON_NAMES: Final[dict[type, str]] = {
    type(None): "null",
    bool: "a boolean",
    str: "a string",
    dict: "an object",
    list: "an array",
    int: "an integer",
    float: "a number with a fraction",
}


def check_json_values(name: str, type_name: str, dtype: np.dtype[Any], data: list[Any], rank: int) -> None:
    """Refuse JSON values the datatype does not take, which numpy would convert silently: null
    becomes NaN, ``"1.5"`` 1.5 and ``true`` 1.0 in a float tensor, 1.5 becomes 1 in an integer
    one, and ``"false"`` True in a BOOL one. Numeric types take JSON numbers (an integer type: no
    fraction), BOOL takes ``true`` and ``false``, as Triton's JSON parser does. Lists nest at most
    ``rank`` deep (the shape's dimensions)."""
    kind = dtype.kind
    allowed = _JSON_TYPES.get(kind)
    if allowed is None:
        return
    found = _leaf_types(name, data, rank)
    if found <= allowed:
        return
    wrong = found - allowed
    whole = wrong == {float} and kind in "iu"  # whole numbers written as 3.0 are integers
    if whole and all(v.is_integer() for v in _leaves(data) if type(v) is float):
        return  # the range is checked as the values are converted
    takes = "true or false" if kind == "b" else "integers" if kind in "iu" else "numbers"
    what = ", ".join(sorted(_JSON_NAMES.get(t, t.__name__) for t in wrong))
    raise InvalidRequest(f"input '{name}': {type_name} data must hold {takes}; it holds {what}")


def _leaf_types(name: str, data: list[Any], rank: int) -> set[type]:
    if not data or type(data[0]) is not list:
        return set(map(type, data))  # the flat list of the common request: one pass in C
    if rank <= 1:
        raise InvalidRequest(f"input '{name}': data nests lists deeper than its shape has dimensions")
    found: set[type] = set()
    for item in data:
        if type(item) is list:
            found |= _leaf_types(name, item, rank - 1)
        else:
            found.add(type(item))
    return found


def _leaves(data: list[Any]) -> Iterable[Any]:
    for item in data:
        if type(item) is list:
            yield from _leaves(item)
        else:
            yield item
