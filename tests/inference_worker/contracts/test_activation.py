"""Activation requests: what a gateway writes is what the platform reads; a bad one is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_worker.contracts.activation import (
    SCHEMA,
    activation_key,
    encode_activation,
    parse_activation,
)
from inference_worker.contracts.errors import ContractError
from tests.support.contract_samples import ACTIVATION


def test_an_activation_request_survives_encode_json_and_parse() -> None:
    payload = json.loads(json.dumps(encode_activation(ACTIVATION)))

    assert payload["schema"] == SCHEMA
    assert parse_activation(payload) == ACTIVATION
    assert ACTIVATION.field == "fraud/canary"
    assert activation_key("kiln:routing") == "kiln:routing:activate"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": "kiln.activation/v2"}, "schema"),
        ({"deployment": 7}, "deployment"),
        ({"variant": None}, "variant"),
        ({"held": -1}, "held"),
        ({"held": True}, "held"),
        ({"requested_at": "now"}, "requested_at"),
    ],
)
def test_a_bad_activation_request_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    payload = {**encode_activation(ACTIVATION), **change}

    with pytest.raises(ContractError) as caught:
        parse_activation(payload)

    assert caught.value.field == field
