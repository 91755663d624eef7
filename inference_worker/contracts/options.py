"""Option tables: one typed field per option, the only place its bounds, default and help live.

An ``OptionField`` is what every reader of an option needs: its name (the
dataclass field and JSON key), kind, unit, bounds, default and help. From it
come the command-line flag (``--max-batch-size``), the environment variable
(``<prefix>MAX_BATCH_SIZE``), the text codec both ends of a command line use
(``to_text``/``from_text``), and the check (``check``) that refuses a value
naming the field. Forms, serializers and the worker's command line all look
the field up in its table when they validate, never before: a table changed
at run time (a test does) changes all of them at once.

The surprising part: ``check`` is strict about types (``True`` is not an
integer, ``"8"`` is not a number): text is ``from_text``'s business, JSON
values are checked as they come.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar, cast

from inference_worker.contracts.errors import ContractError

T = TypeVar("T")


class Kind(Enum):
    """How an option's value is typed, written on a command line and checked."""

    INT = "integer"
    FLOAT = "number"
    TEXT = "text"
    LOWER = "lowercase text"
    SIZES = "list of integers"
    SWITCH = "on or off"


_SWITCH_TEXT = {"1": True, "true": True, "on": True, "yes": True}
_SWITCH_TEXT |= {"0": False, "false": False, "off": False, "no": False}


def number_text(value: float) -> str:
    """``4096`` and ``0.5``, never ``4096.0`` or ``1e+06``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class OptionField(Generic[T]):
    """One option: name, kind, default, help, unit and bounds (inclusive; per element for sizes)."""

    name: str
    kind: Kind
    default: T
    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    label: str = ""
    """What a person calls it (a form label); the name in words when empty."""
    zero: str = ""
    """What 0 means in words, where it is not none of it ("one per core"): pages show that instead."""
    required: bool = False
    secret: bool = False
    """Never on a command line nor in a repr; its variable may name a file holding it (``<VAR>_FILE``)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def title(self) -> str:
        words = self.label or self.name.replace("_", " ").capitalize()
        return f"{words} ({self.unit})" if self.unit in ("ms", "s") else words

    def env(self, prefix: str) -> str:
        """The environment variable carrying it: ``prefix`` + the name in upper case."""
        return prefix + self.name.upper()

    @property
    def limits(self) -> str:
        """The bounds in words (empty without bounds)."""
        low, high = self.low, self.high
        if low is not None and high is not None:
            return f"between {number_text(low)} and {number_text(high)}"
        if low is not None:
            return f"at least {number_text(low)}"
        return "" if high is None else f"at most {number_text(high)}"

    # -- text: the command line and the environment ---------------------------------------------
    def from_text(self, text: str) -> T:
        """The value a flag or variable spells; ``ValueError`` when it spells none (not checked yet)."""
        kind = self.kind
        value: object
        if kind is Kind.INT:
            value = int(text.strip().replace("_", ""))
        elif kind is Kind.FLOAT:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
        elif kind is Kind.SIZES:
            value = tuple(int(part.strip().replace("_", "")) for part in text.split(",") if part.strip())
        elif kind is Kind.SWITCH:
            if text.strip().lower() not in _SWITCH_TEXT:
                raise ValueError(text)
            value = _SWITCH_TEXT[text.strip().lower()]
        elif kind is Kind.LOWER:
            value = text.lower()
        else:
            value = text
        return cast(T, value)

    def to_text(self, value: T) -> str:
        """What ``from_text`` reads back as ``value``."""
        if self.kind is Kind.SIZES:
            return ",".join(str(size) for size in cast(Sequence[int], value))
        if self.kind is Kind.SWITCH:
            return "on" if value else "off"
        return str(value)

    # -- values: JSON, keyword arguments --------------------------------------------------------
    def check(self, value: object) -> T:
        """``value`` if it is of this kind and within bounds (floats as ``float``, sizes as a tuple)."""
        kind = self.kind
        if kind is Kind.INT:
            return cast(T, self._bounded(_integer(value, self.name)))
        if kind is Kind.FLOAT:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ContractError(self.name, "must be a number")
            return cast(T, float(self._bounded(value)))
        if kind is Kind.SIZES:
            if not isinstance(value, list | tuple):
                raise ContractError(self.name, "must be a list of integers")
            return cast(T, tuple(self._bounded(_integer(size, self.name)) for size in value))
        if kind is Kind.SWITCH:
            if not isinstance(value, bool):
                raise ContractError(self.name, "must be true or false")
            return cast(T, value)
        if not isinstance(value, str):
            raise ContractError(self.name, "must be text")
        return cast(T, value)

    def _bounded(self, value: float) -> Any:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ContractError(self.name, f"must be {self.limits}, not {number_text(value)}")
        return value


def whole(bound: float | None) -> int | None:
    """An integer option's bound as an ``int`` (a table keeps every bound as a number)."""
    return None if bound is None else int(bound)


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(name, "must be an integer")
    return value


class OptionTable(Mapping[str, OptionField[Any]]):
    """Fields by name, in the order people read them; a table may take in another whole.

    ``fields`` (a table's own fields) is the one mutable thing: a test swaps a
    field in it to show that every reader follows, including the tables that
    took this one in (they look it up on every read).
    """

    def __init__(self, *entries: OptionField[Any] | OptionTable) -> None:
        self.fields: dict[str, OptionField[Any]] = {
            entry.name: entry for entry in entries if isinstance(entry, OptionField)
        }
        self._entries = entries

    def _current(self) -> dict[str, OptionField[Any]]:
        current: dict[str, OptionField[Any]] = {}
        for entry in self._entries:
            if isinstance(entry, OptionTable):
                current.update(entry._current())
            else:
                current[entry.name] = self.fields[entry.name]
        return current

    def __getitem__(self, name: str) -> OptionField[Any]:
        return self._current()[name]

    def describe(self, values: Mapping[str, Any]) -> str:
        """``values`` in words, for pages: "max batch size 32, max queue delay 2.5 ms, ..."."""
        words = []
        for name, value in values.items():
            option = self[name]
            shown = number_text(value) if option.kind is Kind.FLOAT else option.to_text(value)
            if option.zero and value == 0:
                shown = option.zero
            if shown:
                unit = f" {option.unit}" if option.unit in ("ms", "s") else ""
                words.append(f"{(option.label or name.replace('_', ' ')).lower()} {shown}{unit}")
        return ", ".join(words)

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())
