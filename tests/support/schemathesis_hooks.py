"""Schemathesis hooks of the API contract suite (loaded through SCHEMATHESIS_HOOKS).

Every GET also gets hostile query strings: a NUL character, and a value over the guard's
limit, in one of its own parameters (or a made-up one where it has none). The schema promises a
400 naming the parameter for both; schemathesis checks the answer against it.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

# Over the guard's 1024 characters, under the 4 KB request line servers take (gunicorn answers 414).
HOSTILE_VALUES = ("\x00", "model\x00", "x" * 1025, "y" * 3000, "\x00" * 3)


def _with(query: Any, name: str, value: str) -> Any:
    """The generated query plus one hostile parameter (schemathesis may wrap values with provenance)."""
    if hasattr(query, "map_value"):
        return query.map_value(lambda inner: {**(inner or {}), name: value})
    return {**(query or {}), name: value}


@schemathesis.hook
def before_generate_query(context: Any, strategy: Any) -> Any:
    operation = context.operation
    if operation.method.upper() != "GET":
        return strategy
    names = [p.name for p in operation.query] or ["filter"]
    hostile = st.tuples(st.sampled_from(names), st.sampled_from(HOSTILE_VALUES))
    return st.one_of(
        strategy,
        st.tuples(strategy, hostile).map(lambda pair: _with(pair[0], *pair[1])),
    )
