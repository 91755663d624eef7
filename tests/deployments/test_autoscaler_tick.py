"""The autoscaler's tick on real Redis: gateway stats and activation requests in, replicas and decisions out.

The gateways' side is written with the contracts' encoders, as a gateway writes it; no worker
runs (the reconcile loop is the end-to-end test's business).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User

from config.redis import redis_client
from deployments.autoscaling.models import ScalingDecision, ScalingPolicy
from deployments.inputs import AutoscalingPolicy, VariantSpec, VersionTarget
from deployments.models import Variant, Worker, WorkerState
from deployments.services.autoscaling import autoscale, set_autoscaling
from deployments.services.deployments import create_deployment
from inference_worker.contracts.activation import ActivationRequest, activation_key, encode_activation
from inference_worker.contracts.gateway_stats import GatewaySnapshot, VariantStats, encode_snapshot
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def routing_key(settings: Any) -> Iterator[str]:
    settings.KILN_ROUTING_KEY = f"test-autoscale-{uuid.uuid4().hex}:routing"
    yield settings.KILN_ROUTING_KEY
    client = redis_client()
    for key in client.scan_iter(f"{settings.KILN_ROUTING_KEY}*"):
        client.delete(key)


@pytest.fixture
def variant(owner: User) -> Variant:
    version = ready_version(owner)
    deployment = create_deployment(
        name="fraud",
        model=version.model,
        variants=[VariantSpec(target=VersionTarget(version=1), replicas=1)],
        actor=owner,
    )
    return deployment.variants.get()


def gateway_writes(routing_key: str, *, in_flight: int = 0, held: int = 0, age_s: float = 0.0) -> None:
    now = time.time() - age_s
    stats = VariantStats(version=1, in_flight=in_flight, held=held)
    snapshot = GatewaySnapshot("g1", now - 100, now, 1, {"fraud": {"primary": stats}})
    redis_client().hset(f"{routing_key}:stats", "g1", json.dumps(encode_snapshot(snapshot)))


def policy(variant: Variant, owner: User, **values: Any) -> None:
    base = {"upscale_delay_s": 1.0, "downscale_delay_s": 60.0, "target_in_flight": 2.0, "max_replicas": 4}
    set_autoscaling(variant=variant, policy=AutoscalingPolicy(**{**base, **values}), actor=owner)


def test_load_the_gateways_report_adds_replicas_and_the_decision_says_why(
    variant: Variant, owner: User, routing_key: str
) -> None:
    policy(variant, owner)
    gateway_writes(routing_key, in_flight=6, held=2)

    assert autoscale() == {"variants": 1, "changed": 1}

    variant.refresh_from_db()
    assert variant.replicas == 4
    decision = ScalingDecision.objects.get()
    assert (decision.from_replicas, decision.to_replicas, decision.reason) == (1, 4, "load_up")
    assert decision.short_load == 8.0
    assert decision.policy["target_in_flight"] == 2.0
    assert ScalingPolicy.objects.get().last_scaled_at is not None


def test_no_replica_is_added_while_the_first_is_starting_and_none_serves(
    variant: Variant, owner: User, routing_key: str
) -> None:
    policy(variant, owner)
    first = Worker.objects.create(
        variant=variant, version=variant.version, backend="process", state=WorkerState.STARTING
    )
    gateway_writes(routing_key, in_flight=6, held=2)

    assert autoscale() == {"variants": 1, "changed": 0}

    Worker.objects.filter(pk=first.pk).update(state=WorkerState.READY)
    assert autoscale() == {"variants": 1, "changed": 1}
    variant.refresh_from_db()
    assert variant.replicas == 4


def test_the_gauges_of_a_gateway_that_stopped_writing_do_not_count(
    variant: Variant, owner: User, routing_key: str
) -> None:
    policy(variant, owner)
    gateway_writes(routing_key, in_flight=30, age_s=60)

    assert autoscale() == {"variants": 1, "changed": 0}
    assert not ScalingDecision.objects.exists()


def test_an_activation_request_starts_a_variant_at_zero_and_is_cleared(
    variant: Variant, owner: User, routing_key: str
) -> None:
    policy(variant, owner, min_replicas=0)
    Variant.objects.filter(pk=variant.pk).update(replicas=0)
    request = ActivationRequest("fraud", "primary", "g1", 1, time.time())
    redis_client().hset(activation_key(routing_key), request.field, json.dumps(encode_activation(request)))

    autoscale()

    variant.refresh_from_db()
    assert variant.replicas == 1
    assert ScalingDecision.objects.get().reason == "activate"
    assert redis_client().hlen(activation_key(routing_key)) == 0


def test_a_shadow_keeps_a_replica_even_with_a_minimum_of_zero(
    variant: Variant, owner: User, routing_key: str
) -> None:
    policy(variant, owner, min_replicas=0)
    Variant.objects.filter(pk=variant.pk).update(replicas=0, shadow_percent=50)

    autoscale()

    variant.refresh_from_db()
    assert variant.replicas == 1
    assert ScalingDecision.objects.get().reason == "minimum"
