"""The gateway's table record: what a gateway writes is what the platform reads; the digest names
what a table routes, not when it was built."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.gateway_table import (
    SCHEMA,
    encode_gateway_table,
    parse_gateway_table,
    tables_key,
)
from inference_worker.contracts.routing import encode_table, parse_table, table_digest
from tests.support.contract_samples import GATEWAY_TABLE, TABLE


def test_a_gateway_table_record_survives_encode_json_and_parse() -> None:
    payload = json.loads(json.dumps(encode_gateway_table(GATEWAY_TABLE)))

    assert payload["schema"] == SCHEMA
    assert parse_gateway_table(payload) == GATEWAY_TABLE
    assert tables_key("kiln:routing") == "kiln:routing:tables"


def test_the_digest_ignores_the_version_and_build_time_but_not_a_weight() -> None:
    rebuilt = replace(TABLE, version=TABLE.version + 1, generated_at="2030-01-01T00:00:00+00:00")
    (deployment,) = TABLE.deployments.values()
    heavier = replace(
        deployment, variants=(replace(deployment.variants[0], weight=1), *deployment.variants[1:])
    )

    assert table_digest(rebuilt) == table_digest(TABLE)
    assert table_digest(parse_table(json.loads(json.dumps(encode_table(TABLE))))) == table_digest(TABLE)
    assert table_digest(replace(TABLE, deployments={"fraud": heavier})) != table_digest(TABLE)


def record(**fields: Any) -> dict[str, Any]:
    return {**encode_gateway_table(GATEWAY_TABLE), **fields}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("[]", "gateway table"),
        (record(schema="kiln.gateway-table/v0"), "schema"),
        (record(gateway_id=7), "gateway_id"),
        (record(table_version=-1), "table_version"),
        (record(table_version=1.5), "table_version"),
        (record(table_digest=None), "table_digest"),
        (record(reported_at="now"), "reported_at"),
    ],
)
def test_a_bad_record_is_refused_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(ContractError) as refused:
        parse_gateway_table(payload)

    assert refused.value.field == field
