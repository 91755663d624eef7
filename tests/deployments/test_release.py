"""The release path: stable and candidate roles, rollouts that wait, measure every objective and end in
one audited promotion; alias moves by the deployment's policy; one error shape for what is missing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from config.redis import redis_client
from deployments.models import Report, Rollout, TrafficChange, Variant, Worker
from deployments.services.alias_moves import follow_alias
from deployments.services.gateway_stats import stats_key
from deployments.services.rollouts import advance_rollouts
from inference_worker.contracts.gateway_stats import (
    GatewaySnapshot,
    ShadowStats,
    VariantStats,
    encode_snapshot,
)
from registry.models import Alias, AuditEvent
from tests.support.deployments import two_ready_arms
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def release(owner: User, owner_api: APIClient) -> Iterator[None]:
    """Deployment ``ab``: ``a`` (stable, follows production = v1, 100%) and ``b`` (v2, 0%), ready rows."""
    two_ready_arms(owner, owner_api)
    redis_client().delete(stats_key())
    yield
    redis_client().delete(stats_key())


def start(client: APIClient, **policy: Any) -> dict[str, Any]:
    body = {"candidate": "b", "steps": [10, 100], "hold_s": 1, "max_error_rate": 0.05, "max_p99_ms": 200}
    response = client.post("/api/v1/deployments/ab/rollouts/", {**body, **policy}, format="json")
    assert response.status_code == 201, response.content
    result: dict[str, Any] = response.json()
    return result


def serve(variant: str, *, requests: int, errors: int = 0, p99_ms: float = 20.0) -> None:
    """A report of ``variant``'s worker over the last second."""
    row = Variant.objects.get(name=variant)
    worker = row.workers.filter(state="ready").first()
    now = timezone.now()
    Report.objects.create(
        worker=worker,
        variant=row,
        deployment=row.deployment,
        version_number=row.version.version,
        start=now - timedelta(seconds=1),
        end=now,
        seconds=1.0,
        requests=requests,
        errors=errors,
        outcomes={"success": requests - errors, **({"error": errors} if errors else {})},
        latency_p99_ms=p99_ms,
    )


def compared(*, equal: int, total: int) -> None:
    """The gateway's cumulative shadow comparisons of candidate ``b`` (as a gateway writes them)."""
    shadow = ShadowStats(sent=total, compared=total, argmax_compared=total, argmax_equal=equal)
    snapshot = GatewaySnapshot(
        gateway_id="g1",
        started_at=time.time() - 60,
        updated_at=time.time(),
        deployments={"ab": {"b": VariantStats(version="2", requests=total, shadow=shadow)}},
    )
    redis_client().hset(stats_key(), "g1", json.dumps(encode_snapshot(snapshot)))


def held(rollout_id: int) -> None:
    """The step's hold has passed (reports after the step's start still count)."""
    Rollout.objects.filter(pk=rollout_id).update(step_started_at=timezone.now() - timedelta(seconds=5))
    Report.objects.update(end=timezone.now())


def weights() -> dict[str, int]:
    return dict(Variant.objects.values_list("name", "weight"))


@pytest.mark.usefixtures("release")
def test_the_first_variant_is_stable_and_a_rollout_from_it_defaults_to_it(owner_api: APIClient) -> None:
    roles = {v["name"]: v["role"] for v in owner_api.get("/api/v1/deployments/ab/").json()["variants"]}
    rollout = start(owner_api)

    assert roles == {"a": "stable", "b": "candidate"}
    assert (rollout["baseline"], rollout["min_requests"], rollout["version"]) == ("a", 100, 2)
    assert rollout["state"] == "waiting_for_replicas"
    refused = owner_api.post("/api/v1/deployments/ab/rollouts/", {"candidate": "a"}, format="json")
    assert refused.status_code in (400, 409)


@pytest.mark.usefixtures("release")
def test_a_rollout_waits_visibly_for_a_ready_candidate_replica_then_times_out(owner_api: APIClient) -> None:
    Worker.objects.filter(variant__name="b").update(state="starting")
    rollout = start(owner_api, replica_timeout_s=30)

    advance_rollouts()
    waiting = owner_api.get(f"/api/v1/deployments/ab/rollouts/{rollout['id']}/").json()
    Rollout.objects.filter(pk=rollout["id"]).update(created_at=timezone.now() - timedelta(seconds=31))
    advance_rollouts()
    ended = owner_api.get(f"/api/v1/deployments/ab/rollouts/{rollout['id']}/").json()

    assert waiting["state"] == "waiting_for_replicas"
    assert "waiting for a ready replica of b" in waiting["last_evaluation"]["note"]
    assert ended["state"] == "timed_out"
    assert "no ready replica of b within 30 s" in ended["reason"]
    assert weights() == {"a": 100, "b": 0}
    assert AuditEvent.objects.filter(action="rollout.timed_out").exists()


@pytest.mark.usefixtures("release")
def test_a_step_advances_only_after_min_requests_samples_of_every_objective(owner_api: APIClient) -> None:
    rollout = start(owner_api)
    advance_rollouts()  # ready replica: step 1 (10 %)
    assert weights() == {"a": 90, "b": 10}

    serve("b", requests=60)
    held(rollout["id"])
    advance_rollouts()
    short = Rollout.objects.get()
    serve("b", requests=50)
    held(rollout["id"])
    advance_rollouts()
    moved = Rollout.objects.get()

    assert (short.step_index, weights() if short.step_index else None) == (0, None)
    assert "max_error_rate (60 of 100 samples)" in short.last_evaluation["note"]
    assert short.last_evaluation["objectives"]["max_error_rate"] == {
        "objective": 0.05,
        "value": 0.0,
        "samples": 60,
    }
    assert moved.step_index == 1
    assert weights() == {"a": 0, "b": 100}
    assert moved.history[0]["objectives"]["max_p99_ms"]["samples"] == 110


@pytest.mark.usefixtures("release")
def test_a_succeeded_rollout_ends_in_one_audited_promotion_of_the_stable_variant(
    owner_api: APIClient,
) -> None:
    rollout = start(owner_api, steps=[100])
    advance_rollouts()
    serve("b", requests=150)
    held(rollout["id"])
    advance_rollouts()  # measured and met: the stable variant takes v2, production moves

    promoting = Rollout.objects.get()
    stable = Variant.objects.get(name="a")
    assert promoting.state == "promoting"
    assert (stable.version.version, Alias.objects.get(name="production").version.version) == (2, 2)
    assert weights() == {"a": 0, "b": 100}  # b keeps the traffic until a's replicas serve v2
    event = AuditEvent.objects.get(action="rollout.promoted")
    before, after = event.before or {}, event.after or {}
    assert before["version"] == 1
    assert (after["version"], after["from_variant"]) == (2, "b")

    Worker.objects.filter(variant=stable).update(state="stopped")
    Worker.objects.create(variant=stable, version=stable.version, backend="process", state="ready")
    advance_rollouts()

    done = owner_api.get(f"/api/v1/deployments/ab/rollouts/{rollout['id']}/").json()
    assert done["state"] == "succeeded"
    assert "met every objective at every step" in done["reason"]
    assert weights() == {"a": 100, "b": 0}
    assert TrafficChange.objects.order_by("-id").first().kind == "promote"  # type: ignore[union-attr]
    assert AuditEvent.objects.filter(action="rollout.succeeded").count() == 1


@pytest.mark.usefixtures("release")
def test_shadow_agreement_is_measured_by_mirroring_and_a_disagreeing_candidate_is_rolled_back(
    owner_api: APIClient,
) -> None:
    compared(equal=0, total=0)
    rollout = start(owner_api, min_shadow_agreement=0.99)
    advance_rollouts()
    split = owner_api.get("/api/v1/deployments/ab/traffic/").json()["split"]
    assert split == {
        "a": {"weight": 90, "shadow_percent": 100},
        "b": {"weight": 10, "shadow_percent": 100},
    }

    serve("b", requests=150)
    compared(equal=30, total=40)
    held(rollout["id"])
    advance_rollouts()
    unmeasured = Rollout.objects.get()
    compared(equal=100, total=200)
    advance_rollouts()
    rolled_back = owner_api.get(f"/api/v1/deployments/ab/rollouts/{rollout['id']}/").json()

    assert unmeasured.state == "running"
    assert "min_shadow_agreement (40 of 100 samples)" in unmeasured.last_evaluation["note"]
    assert rolled_back["state"] == "rolled_back"
    assert "shadow agreement 50.0% is below the objective of 99.0% (200 samples)" in rolled_back["reason"]
    assert rolled_back["last_evaluation"]["objectives"]["min_shadow_agreement"] == {
        "objective": 0.99,
        "value": 0.5,
        "samples": 200,
    }
    after = owner_api.get("/api/v1/deployments/ab/traffic/").json()["split"]
    assert after == {"a": {"weight": 100, "shadow_percent": 0}, "b": {"weight": 0, "shadow_percent": 0}}


@pytest.mark.usefixtures("release")
def test_an_alias_move_under_traffic_starts_a_guarded_rollout_and_a_zero_percent_variant_follows_at_once(
    owner: User, owner_api: APIClient
) -> None:
    ready_version(owner, number=3)
    owner_api.put("/api/v1/models/cnn/aliases/staging/", {"version": 2}, format="json")
    owner_api.put("/api/v1/deployments/ab/variants/b/version/", {"alias": "staging"}, format="json")
    owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 3}, format="json")
    owner_api.put("/api/v1/models/cnn/aliases/staging/", {"version": 3}, format="json")
    follow_alias(alias=Alias.objects.get(name="staging"))  # on_commit does this outside a test transaction
    follow_alias(alias=Alias.objects.get(name="production"))

    variants = {v["name"]: v for v in owner_api.get("/api/v1/deployments/ab/").json()["variants"]}
    rollout = Rollout.objects.get()

    assert variants["b"]["version"] == 3  # 0 %: at once
    assert variants["a"]["version"] == 1  # carries traffic: through a rollout
    assert rollout.version is not None
    assert (rollout.trigger, rollout.candidate.name, rollout.version.version) == (
        "alias_move",
        "candidate",
        3,
    )
    assert variants["candidate"]["version"] == 3
    assert variants["candidate"]["weight"] == 0
    assert f"guarded rollout #{rollout.pk}" in variants["a"]["follow_note"]
    assert weights()["a"] == 100


@pytest.mark.usefixtures("release")
def test_the_manual_policy_leaves_the_variant_and_says_why(owner: User, owner_api: APIClient) -> None:
    ready_version(owner, number=3)
    policy = owner_api.put(
        "/api/v1/deployments/ab/on-alias-move/", {"on_alias_move": "manual"}, format="json"
    )
    owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 3}, format="json")
    follow_alias(alias=Alias.objects.get(name="production"))

    stable = owner_api.get("/api/v1/deployments/ab/variants/a/").json()
    assert policy.json()["on_alias_move"] == "manual"
    assert stable["version"] == 1
    assert "policy is manual" in stable["follow_note"]
    assert not Rollout.objects.exists()
    browser = Client()
    browser.force_login(owner)
    assert "policy is manual" in browser.get("/deployments/ab/").content.decode()


@pytest.mark.usefixtures("release")
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/deployments/ab/variants/nope/promote/", {}),
        ("put", "/api/v1/deployments/ab/variants/nope/shadow/", {"percent": 10}),
        ("get", "/api/v1/deployments/ab/variants/nope/shadow/", None),
        ("post", "/api/v1/deployments/ab/variants/nope/scale/", {"replicas": 1}),
        ("post", "/api/v1/deployments/ab/rollouts/", {"candidate": "nope"}),
        ("get", "/api/v1/deployments/ab/rollouts/999/", None),
        ("post", "/api/v1/deployments/ab/rollouts/999/abort/", None),
        ("post", "/api/v1/deployments/ab/traffic/history/999/restore/", None),
        ("post", "/api/v1/deployments/nope/variants/a/promote/", {}),
        ("put", "/api/v1/models/nope/aliases/production/", {"version": 1}),
    ],
)
def test_anything_missing_is_a_404_in_one_shape(
    owner_api: APIClient, method: str, path: str, body: Any
) -> None:
    response = getattr(owner_api, method)(path, body, format="json")

    assert response.status_code == 404, response.content
    assert set(response.json()) == {"message", "code", "extra"}
    assert response.json()["code"] == "not_found"


@pytest.mark.usefixtures("release")
def test_state_conflicts_are_409s_in_one_shape(owner_api: APIClient) -> None:
    Worker.objects.filter(variant__name="b").update(state="starting")
    promote = owner_api.post("/api/v1/deployments/ab/variants/b/promote/", {}, format="json")
    split = owner_api.put("/api/v1/deployments/ab/traffic/", {"split": {"a": 50, "b": 50}}, format="json")
    shadow = owner_api.put("/api/v1/deployments/ab/variants/b/shadow/", {"percent": 50}, format="json")
    stable = owner_api.post("/api/v1/deployments/ab/variants/a/promote/", {}, format="json")

    for response in (promote, split, shadow):
        assert response.status_code == 409, response.content
        assert response.json()["code"] == "not_ready"
        assert "variant 'b' has no ready replica" in response.json()["message"]
    assert stable.status_code == 409
    assert "is the stable variant already" in stable.json()["message"]


@pytest.mark.usefixtures("release")
def test_the_deployment_page_shows_roles_each_objectives_samples_and_promotes_only_candidates(
    owner: User, owner_api: APIClient
) -> None:
    rollout = start(owner_api)
    advance_rollouts()
    serve("b", requests=60)
    held(rollout["id"])
    advance_rollouts()
    browser = Client()
    browser.force_login(owner)

    page = browser.get("/deployments/ab/").content.decode()
    promoted = browser.post("/deployments/ab/variants/b/promote/", {"reason": "by hand"}, follow=True)

    assert "stable" in page
    assert "max_error_rate 0.0000 over 60" in page
    assert "max_error_rate (60 of 100 samples)" in page
    assert 'aria-label="Promote b"' in page
    assert 'aria-label="Promote a"' not in page  # the stable variant is promoted to, not from
    assert "rollout #" in promoted.content.decode() or "in progress" in promoted.content.decode()
