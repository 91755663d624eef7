"""The routing table: what the platform publishes is what the gateway reads, and a bad table is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.routing import SCHEMA, encode_table, parse_table
from tests.support.contract_samples import TABLE


def test_a_table_survives_encode_json_and_parse() -> None:
    payload = json.loads(json.dumps(encode_table(TABLE)))

    assert payload["schema"] == SCHEMA
    assert parse_table(payload) == TABLE


def test_a_table_of_the_first_format_reads_with_its_defaults() -> None:
    """No schema, integer versions, no model names or replica versions: what platforms sent before."""
    first = {
        "version": 7,
        "deployments": {
            "fraud": {
                "variants": [{"name": "a", "version": 3, "weight": 100, "replicas": [{"url": "http://h:1"}]}]
            }
        },
    }

    table = parse_table(first)

    variant = table.deployments["fraud"].variants[0]
    assert (table.deployments["fraud"].model, variant.model_name, variant.version) == ("fraud", "fraud", "3")
    assert (variant.replicas[0].version, variant.replicas[0].host, variant.replicas[0].port) == ("3", "h", 1)


def variants(*items: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "deployments": {"d": {"variants": list(items)}}}


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ([], "table", "must be an object"),
        ({"schema": "kiln.routing-table/v9", "deployments": {}}, "schema", "expected"),
        ({"version": "7", "deployments": {}}, "version", "must be an integer"),
        ({"deployments": {"a b": {"variants": []}}}, "deployments.a b", "must be 1-128"),
        (
            variants({"name": "x\r\nSet-Cookie: y", "weight": 1}),
            "deployments.d.variants[0].name",
            "must be 1-128",
        ),
        (variants({"name": "x", "weight": -1}), "deployments.d.variants[0].weight", "at least 0"),
        (variants({"name": "x", "weight": True}), "deployments.d.variants[0].weight", "finite number"),
        (
            variants({"name": "x", "shadow_percent": 101}),
            "deployments.d.variants[0].shadow_percent",
            "at most 100",
        ),
        (
            variants({"name": "x", "replicas": [{"url": "https://h:1"}]}),
            "deployments.d.variants[0].replicas[0].url",
            "http://host:port",
        ),
        (
            variants({"name": "x", "replicas": [{"url": "http://h"}]}),
            "deployments.d.variants[0].replicas[0].url",
            "http://host:port",
        ),
        (variants({"name": "x"}, {"name": "x"}), "deployments.d.variants", "repeat"),
    ],
)
def test_a_malformed_table_is_refused_naming_the_field(payload: Any, field: str, reason: str) -> None:
    with pytest.raises(ContractError) as refused:
        parse_table(payload)

    assert refused.value.field == field
    assert reason in refused.value.reason
    assert str(refused.value).startswith(f"{field}: ")
