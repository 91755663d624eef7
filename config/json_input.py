"""JSON from clients, read strictly: one place for the rules every JSON value obeys before it is stored.

- ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259); Python's ``json`` accepts them
  and PostgreSQL's ``jsonb`` then refuses the row, which surfaced as a 500.
- A NUL character cannot be stored in a PostgreSQL text or ``jsonb`` value, in a string or a key.

Both are refused with a 400 that names where the value sits (``metadata.x``, ``split.a``). The API's
JSON bodies go through ``StrictJSONParser``; JSON carried in a form field goes through ``loads``.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding  # type: ignore[attr-defined]

from config.errors import PlatformError


class _Constant:
    """Stands in for NaN or Infinity while parsing, so the walk can say where it was."""

    def __init__(self, name: str) -> None:
        self.name = name


def problem_in(value: Any, root: str) -> str | None:
    """``"<path>: <what is wrong>"`` for the first NaN, Infinity or NUL character in ``value``, or None.

    Iterative, so a deeply nested value cannot exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [(root, value)]
    while stack:
        path, item = stack.pop()
        where = path or "body"
        if isinstance(item, _Constant):
            return f"{where}: {item.name} is not a JSON number; send a finite number or null"
        if isinstance(item, float) and not math.isfinite(item):  # 1e999 parses as infinity
            return f"{where}: out of range for a number; send a finite number or null"
        if isinstance(item, str) and "\x00" in item:
            return f"{where}: NUL characters are not allowed"
        if isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if "\x00" in str(key):
                    return f"{where}: NUL characters are not allowed in keys"
                stack.append((f"{path}.{key}" if path else str(key), child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in reversed(list(enumerate(item))))
    return None


def check_value(value: Any, field: str) -> Any:
    """``value`` itself when it holds nothing PostgreSQL or JSON refuses; a 400 naming the spot if it does."""
    problem = problem_in(value, field)
    if problem is not None:
        raise PlatformError(problem, code="invalid", extra={"fields": {problem.split(":", 1)[0]: [problem]}})
    return value


def decode(text: str | bytes, field: str) -> Any:
    """Decode JSON text; NaN and Infinity are marked (not refused) so ``check_value`` can name them."""
    try:
        return json.loads(text, parse_constant=_Constant)
    except (ValueError, RecursionError) as exc:
        raise PlatformError(f"{field or 'body'}: not valid JSON ({exc})", code="invalid") from None


def loads(text: str | bytes, field: str) -> Any:
    """A JSON value sent as text in ``field`` (a form field, a report): valid and storable, or a 400."""
    return check_value(decode(text, field), field)


class StrictJSONParser(JSONParser):
    """DRF's JSON parser with the rules above: a 400 naming the field instead of a 500 at the database."""

    def parse(self, stream: IO[Any], media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = get_encoding(parser_context or {})
        try:
            text = codecs.getreader(encoding)(stream).read()
        except UnicodeDecodeError as exc:
            raise ParseError(f"the body is not valid {encoding}: {exc}") from None
        return loads(text, "")
