"""The pure parts of routing: the table, ``choose_arm``, ``choose_replica``, ``wants_shadow``."""

from __future__ import annotations

from collections import Counter
from random import Random
from typing import Any

import pytest

from inference_worker.contracts.routing import parse_table
from inference_worker.gateway.routing import (
    INFER,
    INVALID,
    READ,
    Replica,
    Route,
    RoutingTable,
    build_table,
    choose_arm,
    choose_replica,
    parse_target,
    wants_shadow,
)


def table(payload: Any) -> RoutingTable:
    """What the gateway serves from a published table."""
    return build_table(parse_table(payload))


def route(weights: dict[str, float], shadows: dict[str, float] | None = None, replicas: int = 1) -> Route:
    variants: list[dict[str, Any]] = [
        {
            "name": name,
            "model_name": "fraud",
            "version": index + 1,
            "weight": weight,
            "shadow_percent": 0,
            "replicas": [
                {"id": r, "url": f"http://127.0.0.1:{40000 + 10 * index + r}"} for r in range(replicas)
            ],
        }
        for index, (name, weight) in enumerate(weights.items())
    ]
    for name, percent in (shadows or {}).items():
        variants.append({"name": name, "version": 9, "weight": 0, "shadow_percent": percent, "replicas": []})
    return table({"version": 1, "deployments": {"fraud": {"model": "m", "variants": variants}}}).deployments[
        "fraud"
    ]


def keys(n: int) -> list[bytes]:
    return [f"user-{i}".encode() for i in range(n)]


def test_the_platform_s_table_is_built_with_labels_and_arms() -> None:
    payload = {
        "version": 1732700000123,
        "generated_at": "2026-11-27T09:00:00+00:00",
        "deployments": {
            "fraud": {
                "model": "fraud-model",
                "variants": [
                    {
                        "name": "primary",
                        "model_name": "fraud",
                        "version": 3,
                        "weight": 90,
                        "shadow_percent": 0,
                        "replicas": [
                            {
                                "id": 12,
                                "url": "http://127.0.0.1:40123",
                                "grpc": "127.0.0.1:40124",
                                "version": 3,
                            }
                        ],
                    },
                    {
                        "name": "canary",
                        "model_name": "fraud",
                        "version": 4,
                        "weight": 10,
                        "shadow_percent": 0,
                        "replicas": [],
                    },
                    {
                        "name": "next",
                        "model_name": "fraud",
                        "version": 5,
                        "weight": 0,
                        "shadow_percent": 25,
                        "replicas": [],
                    },
                ],
            }
        },
    }
    built = table(payload)
    fraud = built.deployments["fraud"]
    assert built.version == 1732700000123
    assert [v.name for v in fraud.arms] == ["primary", "canary"]
    assert fraud.cumulative == (90.0, 100.0)
    assert [v.name for v in fraud.shadows] == ["next"]
    replica = fraud.arms[0].replicas[0]
    assert (replica.host, replica.port, replica.url) == ("127.0.0.1", 40123, "http://127.0.0.1:40123")
    assert replica.labels == b"X-Kiln-Variant: primary\r\nX-Kiln-Model-Version: 3\r\n"


def test_choose_arm_splits_by_weight() -> None:
    fraud = route({"a": 90, "b": 10})
    rng = Random(1)
    counts = Counter(choose_arm(fraud, None, rng).name for _ in range(100_000))  # type: ignore[union-attr]
    assert abs(counts["b"] / 100_000 - 0.10) < 0.005


def test_choose_arm_without_live_arms_is_none_and_a_single_arm_always_wins() -> None:
    assert choose_arm(route({"a": 0}), None, Random(1)) is None
    only = route({"a": 0, "b": 5})
    assert {choose_arm(only, key, Random(1)).name for key in keys(50)} == {"b"}  # type: ignore[union-attr]


def test_a_sticky_key_always_reaches_the_same_arm_and_keys_spread_by_weight() -> None:
    fraud = route({"a": 70, "b": 20, "c": 10})
    first = {key: choose_arm(fraud, key, Random(1)) for key in keys(20_000)}
    again = {key: choose_arm(fraud, key, Random(2)) for key in keys(20_000)}
    assert first == again
    shares = Counter(v.name for v in first.values() if v is not None)
    for name, weight in (("a", 0.7), ("b", 0.2), ("c", 0.1)):
        assert abs(shares[name] / 20_000 - weight) < 0.015


def test_a_weight_change_moves_only_the_keys_it_must() -> None:
    before = route({"a": 90, "b": 10})
    after = route({"a": 80, "b": 20})
    moved = Counter(
        (choose_arm(before, key, Random(1)).name, choose_arm(after, key, Random(1)).name)  # type: ignore[union-attr]
        for key in keys(20_000)
    )
    assert moved[("b", "a")] == 0  # b only grew: none of its keys leaves it
    assert abs(moved[("a", "b")] / 20_000 - 0.10) < 0.01


def test_a_new_arm_takes_keys_only_for_itself() -> None:
    before = route({"a": 50, "b": 50})
    after = route({"a": 50, "b": 50, "c": 25})
    for key in keys(5_000):
        old, new = choose_arm(before, key, Random(1)), choose_arm(after, key, Random(1))
        assert new is not None
        assert old is not None
        assert new.name in (old.name, "c")


def test_choose_replica_takes_the_least_loaded_and_breaks_ties_at_random() -> None:
    replicas = route({"a": 1}, replicas=3).arms[0].replicas
    load = {replicas[0].url: 3, replicas[1].url: 1, replicas[2].url: 1}
    rng = Random(3)
    chosen = Counter(choose_replica(replicas, load.__getitem__, rng) for _ in range(3_000))
    assert set(chosen) == {replicas[1], replicas[2]}
    assert min(chosen.values()) > 1_200


def test_choose_replica_skips_the_replicas_already_tried() -> None:
    replicas: tuple[Replica, ...] = route({"a": 1}, replicas=2).arms[0].replicas
    idle = {r.url: 0 for r in replicas}
    assert choose_replica(replicas, idle.__getitem__, Random(1), {replicas[0].url}) == replicas[1]
    assert choose_replica(replicas, idle.__getitem__, Random(1), {r.url for r in replicas}) is None
    assert choose_replica(replicas[:1], idle.__getitem__, Random(1), {replicas[0].url}) is None
    assert choose_replica((), idle.__getitem__, Random(1)) is None


def test_wants_shadow_copies_its_percentage() -> None:
    rng = Random(5)
    shadow = route({"a": 100}, shadows={"s": 25}).shadows[0]
    share = sum(wants_shadow(shadow, rng) for _ in range(40_000)) / 40_000
    assert abs(share - 0.25) < 0.01
    full = route({"a": 100}, shadows={"s": 100}).shadows[0]
    assert all(wants_shadow(full, rng) for _ in range(1_000))


@pytest.mark.parametrize(
    ("url", "kind", "key", "rest"),
    [
        (b"/v2/models/fraud/infer", INFER, b"fraud", b"/infer"),
        (b"/v2/models/fraud/versions/3/infer?x=1", INFER, b"fraud", b"/versions/3/infer?x=1"),
        (b"/v1/models/fraud:predict", INFER, b"fraud", b":predict"),
        (b"/v2/models/fraud", READ, b"fraud", b""),
        (b"/v2/models/fraud/ready", READ, b"fraud", b"/ready"),
        (b"/v2/models/fraud/versions/3/ready", READ, b"fraud", b"/versions/3/ready"),
        (b"/v1/models/fraud", READ, b"fraud", b""),
        (b"/v2/models/fr%61ud/infer", INFER, b"fraud", b"/infer"),
        (b"/v2/models/fraud/explain", INVALID, b"fraud", b"/explain"),
        (b"/v2/models/fraud/versions//infer/x", INVALID, b"fraud", b"/versions//infer/x"),
    ],
)
def test_a_model_url_is_taken_apart_into_what_it_asks_and_the_deployment(
    url: bytes, kind: int, key: bytes, rest: bytes
) -> None:
    target = parse_target(url)
    assert target is not None
    assert (target.kind, target.key, target.rest) == (kind, key, rest)
    assert target.prefix + target.name + target.rest == url


def test_other_urls_are_not_model_targets() -> None:
    assert parse_target(b"/v2/health/ready") is None
    assert parse_target(b"/metrics") is None
