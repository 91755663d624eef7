"""Extension points: how a lower app tells a higher one about an event without importing it.

The lower app declares a ``Hook`` and calls it; the higher app registers its function in its
``AppConfig.ready()``. Imports keep going down (config < accounts < registry < deployments <
dashboard/observability), and what a hook does is found by searching for its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Hook(Generic[P, R]):
    """A named list of functions called in registration order; a function is registered once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._functions: list[Callable[P, R]] = []

    def register(self, function: Callable[P, R]) -> Callable[P, R]:
        if function not in self._functions:
            self._functions.append(function)
        return function

    def call(self, *args: P.args, **kwargs: P.kwargs) -> list[R]:
        """Every registered function's answer, in order (none registered: an empty list)."""
        return [function(*args, **kwargs) for function in self._functions]

    def __repr__(self) -> str:
        return f"Hook({self.name!r}, {len(self._functions)} registered)"
