"""Reading decoded JSON: typed values out of ``object``, or a ``ContractError`` naming where.

Every ``parse_*`` of this package reads through these, so a refusal always
names the dotted path of the value (``window.latency_ms.p50``). Numbers are
never booleans (``True`` is an ``int`` to Python, not to a message).
"""

from __future__ import annotations

import math
from typing import Any

from inference_worker.contracts.errors import ContractError


def at(where: str, key: str | int) -> str:
    """The path of ``key`` inside ``where``: ``a.b``, or ``a[3]`` for a list index."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContractError(where, "must be an object")
    return value


def sequence(value: object, where: str, *, most: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise ContractError(where, "must be a list")
    if most is not None and len(value) > most:
        raise ContractError(where, f"must have at most {most} items")
    return value


def text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ContractError(where, "must be a string")
    return value


def switch(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ContractError(where, "must be true or false")
    return value


def integer(value: object, where: str, *, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(where, "must be an integer")
    if low is not None and value < low:
        raise ContractError(where, f"must be at least {low}")
    return value


def number(value: object, where: str, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ContractError(where, "must be a finite number")
    if low is not None and value < low:
        raise ContractError(where, f"must be at least {low:g}")
    return float(value)


def optional_number(value: object, where: str, *, low: float | None = None) -> float | None:
    return None if value is None else number(value, where, low=low)


def plain(value: float) -> int | float:
    """A whole float as an ``int`` (``90`` rather than ``90.0`` in the JSON a person reads)."""
    return int(value) if float(value).is_integer() else value
