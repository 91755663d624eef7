"""The inputs a conversion validated, which every worker of the version warms up with.

Conversion runs the model on inputs whose dynamic dimensions (but the batch) are 8 and whose
integers are drawn from ``[0, int_high)``; it records those shapes with the version (the
conversion report's ``REPORT_KEY``), and the platform hands them to each worker as
``--warmup-inputs``::

    {"shapes": {"image": [-1, 3, 8, 8]}, "int_high": 100}

``-1`` is the batch dimension (each warm-up batch size fills it). The worker warms up with random
inputs of those shapes, as the conversion did, instead of zeros with every dynamic dimension 1
(which a 3x3 convolution over a dynamic height or a model dividing by an input's maximum cannot
run). An empty value (versions converted before this) keeps that old warm-up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.wire import at, integer, mapping, sequence

REPORT_KEY = "warmup"
"""Where the conversion report keeps the encoded record."""
_MOST_DIMS = 8
_MOST_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class WarmupInputs:
    """Each input's validated shape (``-1``: the batch) and the integers' range."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    int_high: int = 100

    def __post_init__(self) -> None:
        for name, shape in self.shapes.items():
            where = at("shapes", name)
            if not name or len(shape) > _MOST_DIMS:
                raise ContractError(where, f"must name an input and have at most {_MOST_DIMS} dimensions")
            size = 1
            for index, dim in enumerate(shape):
                if dim < (-1 if index == 0 else 1):
                    raise ContractError(at(where, index), "must be positive (-1 only for the batch)")
                size *= max(dim, 1)
            if size > _MOST_ELEMENTS:
                raise ContractError(where, f"more than {_MOST_ELEMENTS} elements per row")
        if self.int_high < 1:
            raise ContractError("int_high", "must be at least 1")


def encode_warmup(record: WarmupInputs) -> dict[str, Any]:
    return {
        "shapes": {name: list(shape) for name, shape in record.shapes.items()},
        "int_high": record.int_high,
    }


def parse_warmup(payload: object) -> WarmupInputs:
    """The record in a decoded JSON value; ``ContractError`` names the first field refused."""
    item = mapping(payload, "warmup")
    shapes = {
        name: tuple(
            integer(d, at(at("shapes", name), i)) for i, d in enumerate(sequence(dims, at("shapes", name)))
        )
        for name, dims in mapping(item.get("shapes"), "shapes").items()
    }
    return WarmupInputs(shapes=shapes, int_high=integer(item.get("int_high", 100), "int_high"))


def warmup_text(record: WarmupInputs | None) -> str:
    """The ``--warmup-inputs`` value ("" for none)."""
    return "" if record is None else json.dumps(encode_warmup(record), separators=(",", ":"))


def parse_warmup_text(text: str) -> WarmupInputs | None:
    """``--warmup-inputs`` read back; None when empty."""
    if not text:
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        raise ContractError("warmup_inputs", "must be JSON") from None
    return parse_warmup(payload)
