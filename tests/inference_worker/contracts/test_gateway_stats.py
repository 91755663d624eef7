"""Gateway stats: what a gateway writes is what the platform reads; snapshots add up."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.gateway_stats import (
    SCHEMA,
    ShadowStats,
    VariantStats,
    add_variant_stats,
    encode_snapshot,
    parse_snapshot,
)
from tests.support.contract_samples import LATENCY, SNAPSHOT


def test_a_snapshot_survives_encode_json_and_parse() -> None:
    payload = json.loads(json.dumps(encode_snapshot(SNAPSHOT)))

    assert payload["schema"] == SCHEMA
    assert parse_snapshot(payload) == SNAPSHOT


def test_two_gateways_add_up_and_the_newest_version_labels_the_variant() -> None:
    one = SNAPSHOT.deployments["fraud"]["b"]
    older = replace(one, version=3, responses={"200": 5, "504": 1}, shadow=ShadowStats(max_abs_diff_max=0.5))

    both = add_variant_stats(older, one)

    assert (both.version, both.requests, both.retries) == (4, 240, 2)
    assert both.responses == {"200": 123, "504": 1, "503": 2}
    assert both.latency_ms.counts == tuple(2 * c for c in LATENCY.counts)
    assert (both.shadow.sent, both.shadow.max_abs_diff_max) == (60, 0.5)
    assert add_variant_stats(VariantStats(), one) == one


def snapshot(**variant: Any) -> dict[str, Any]:
    return {
        "gateway_id": "g",
        "started_at": 1.0,
        "updated_at": 2.0,
        "deployments": {"fraud": {"variants": {"b": variant}}},
    }


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("[]", "snapshot"),
        ({"schema": "kiln.gateway-stats/v2"}, "schema"),
        ({**snapshot(), "gateway_id": 7}, "gateway_id"),
        (snapshot(requests=-1), "deployments.fraud.variants.b.requests"),
        (snapshot(responses={"200": "many"}), "deployments.fraud.variants.b.responses.200"),
        (snapshot(latency_ms={"le": [1, 2], "counts": [1, 1]}), "deployments.fraud.variants.b.latency_ms.le"),
        (
            snapshot(shadow={"max_abs_diff_max": float("nan")}),
            "deployments.fraud.variants.b.shadow.max_abs_diff_max",
        ),
    ],
)
def test_a_malformed_snapshot_is_refused_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(ContractError) as refused:
        parse_snapshot(payload)

    assert refused.value.field == field
