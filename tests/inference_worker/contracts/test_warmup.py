"""The warm-up inputs a conversion records: what the platform passes is what the worker reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.warmup import (
    WarmupInputs,
    encode_warmup,
    parse_warmup,
    parse_warmup_text,
    warmup_text,
)

RECORD = WarmupInputs(shapes={"image": (-1, 3, 8, 8), "tokens": (-1, 6)}, int_high=50)


def test_a_record_survives_encode_json_and_parse_and_the_command_line_text() -> None:
    assert parse_warmup(json.loads(json.dumps(encode_warmup(RECORD)))) == RECORD
    assert parse_warmup_text(warmup_text(RECORD)) == RECORD
    assert warmup_text(None) == ""
    assert parse_warmup_text("") is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "warmup"),
        ({"shapes": []}, "shapes"),
        ({"shapes": {"image": [-1, 0, 8]}}, "shapes.image[1]"),
        ({"shapes": {"image": [3, -1]}}, "shapes.image[1]"),
        ({"shapes": {"image": [-1, 1 << 13, 1 << 13]}}, "shapes.image"),
        ({"shapes": {"image": [-1, "8"]}}, "shapes.image[1]"),
        ({"shapes": {}, "int_high": 0}, "int_high"),
    ],
)
def test_a_bad_record_is_refused_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(ContractError) as refused:
        parse_warmup(payload)

    assert refused.value.field == field
