"""Traffic splits through the API: validation by name, history, restore, promote, shadow, rollouts."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Rollout, TrafficChange, Variant, Worker
from registry.models import Alias, AuditEvent
from tests.support.deployments import two_ready_arms

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_arms(owner: User, owner_api: APIClient) -> None:
    """A deployment with variants a (v1, 100%) and b (v2, 0%), each with one ready worker row."""
    two_ready_arms(owner, owner_api)


def put_split(client: APIClient, split: Any, reason: str = "") -> Any:
    return client.put("/api/v1/deployments/ab/traffic/", {"split": split, "reason": reason}, format="json")


@pytest.mark.usefixtures("two_arms")
def test_a_split_is_applied_recorded_and_audited(owner_api: APIClient) -> None:
    response = put_split(owner_api, {"a": 90, "b": 10}, reason="canary")

    assert response.status_code == 200, response.content
    assert response.json()["split"] == {
        "a": {"weight": 90, "shadow_percent": 0},
        "b": {"weight": 10, "shadow_percent": 0},
    }
    change = TrafficChange.objects.get()
    assert (change.actor_label, change.reason, change.kind) == ("olivia", "canary", "manual")
    assert change.before["a"]["weight"] == 100
    assert AuditEvent.objects.filter(action="traffic.manual", reason="canary").exists()
    history = owner_api.get("/api/v1/deployments/ab/traffic/").json()["history"]
    assert [h["after"]["b"]["weight"] for h in history] == [10]


@pytest.mark.usefixtures("two_arms")
@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"a": 90}, "missing variant(s) b"),
        ({"a": 90, "b": 10, "c": 0}, "unknown variant(s) c"),
        ({"a": 90, "b": 20}, "must add up to 100, got 110"),
        ({"a": 101, "b": -1}, "split.a.weight"),
        ({"a": "ninety", "b": 10}, "split.a.weight"),
        ({"a": {"weight": 90, "shadow_percent": 10}, "b": 10}, "either live"),
        ([], "give every variant"),
    ],
)
def test_partial_or_inconsistent_splits_are_400s_naming_the_problem(
    owner_api: APIClient, split: Any, message: str
) -> None:
    response = put_split(owner_api, split)

    assert response.status_code == 400
    assert message in response.json()["message"]
    assert not TrafficChange.objects.exists()


@pytest.mark.usefixtures("two_arms")
def test_a_variant_without_a_ready_replica_cannot_get_weight(owner_api: APIClient) -> None:
    Worker.objects.filter(variant__name="b").update(state="starting")

    response = put_split(owner_api, {"a": 50, "b": 50})

    assert response.status_code == 409
    assert response.json()["code"] == "not_ready"
    assert "no ready replica" in response.json()["message"]


@pytest.mark.usefixtures("two_arms")
def test_an_earlier_split_is_restored_in_one_call(owner_api: APIClient) -> None:
    put_split(owner_api, {"a": 90, "b": 10})
    put_split(owner_api, {"a": 50, "b": 50})
    first = TrafficChange.objects.order_by("id").first()
    assert first is not None

    response = owner_api.post(f"/api/v1/deployments/ab/traffic/history/{first.pk}/restore/")

    assert response.status_code == 200
    assert response.json()["split"]["b"]["weight"] == 10
    assert response.json()["change"]["kind"] == "restore"
    assert f"change #{first.pk}" in response.json()["change"]["reason"]


@pytest.mark.usefixtures("two_arms")
def test_promote_gives_the_stable_variant_the_version_and_moves_its_alias_in_one_forced_action(
    owner_api: APIClient,
) -> None:
    response = owner_api.post(
        "/api/v1/deployments/ab/variants/b/promote/", {"reason": "hotfix"}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["rollout"]["state"], body["rollout"]["forced"], body["rollout"]["trigger"]) == (
        "promoting",
        True,
        "promote",
    )
    stable = Variant.objects.get(name="a")
    assert (stable.role, stable.version.version, stable.alias) == ("stable", 2, "production")
    assert Alias.objects.get(name="production").version.version == 2
    event = AuditEvent.objects.get(action="rollout.promoted")
    assert "forced" in event.reason
    assert "hotfix" in event.reason
    assert body["split"]["a"]["weight"] == 100  # the traffic stays until a's replicas serve v2


@pytest.mark.usefixtures("two_arms")
def test_a_shadow_takes_no_live_weight(owner_api: APIClient) -> None:
    shadow = owner_api.put("/api/v1/deployments/ab/variants/b/shadow/", {"percent": 100}, format="json")
    live_shadow = owner_api.put("/api/v1/deployments/ab/variants/a/shadow/", {"percent": 50}, format="json")

    assert shadow.status_code == 200
    assert shadow.json()["split"]["b"] == {"weight": 0, "shadow_percent": 100}
    assert live_shadow.status_code == 409
    assert "carries 100% of live traffic" in live_shadow.json()["message"]


@pytest.mark.usefixtures("two_arms")
def test_a_rollout_is_validated_started_once_and_controllable(owner_api: APIClient) -> None:
    bad = owner_api.post(
        "/api/v1/deployments/ab/rollouts/", {"candidate": "b", "steps": [50, 25]}, format="json"
    )
    started = owner_api.post(
        "/api/v1/deployments/ab/rollouts/",
        {"candidate": "b", "steps": [10, 100], "hold_s": 5, "max_error_rate": 0.05, "max_p99_ms": 200},
        format="json",
    )
    second = owner_api.post("/api/v1/deployments/ab/rollouts/", {"candidate": "b"}, format="json")
    rollout_id = started.json()["id"]
    paused = owner_api.post(f"/api/v1/deployments/ab/rollouts/{rollout_id}/pause/")
    resumed = owner_api.post(f"/api/v1/deployments/ab/rollouts/{rollout_id}/resume/")
    aborted = owner_api.post(f"/api/v1/deployments/ab/rollouts/{rollout_id}/abort/")
    again = owner_api.post(f"/api/v1/deployments/ab/rollouts/{rollout_id}/resume/")

    assert bad.status_code == 400
    assert "increase" in bad.json()["message"]
    assert started.status_code == 201
    assert started.json()["baseline"] == "a"
    assert second.status_code == 409
    assert "in progress already" in second.json()["message"]
    assert [paused.json()["state"], resumed.json()["state"], aborted.json()["state"]] == [
        "paused",
        "waiting_for_replicas",  # it had not taken traffic yet: it waits for a ready replica again
        "aborted",
    ]
    assert again.status_code == 409
    assert Rollout.objects.get().state == "aborted"


@pytest.mark.usefixtures("two_arms")
def test_the_web_split_control_applies_a_preset_and_refuses_bad_numbers_with_a_message(owner: User) -> None:
    from django.test import Client

    browser = Client()
    browser.force_login(owner)

    applied = browser.post("/deployments/ab/traffic/", {"preset": "90,10"}, follow=True)
    assert applied.status_code == 200
    assert dict(Variant.objects.values_list("name", "weight")) == {"a": 90, "b": 10}

    for bad in ({"preset": "ninety,ten"}, {"weight-a": "lots", "weight-b": "0"}):
        refused = browser.post("/deployments/ab/traffic/", bad, follow=True)
        assert refused.status_code == 200
        assert "weights must be whole numbers" in refused.content.decode()
    assert dict(Variant.objects.values_list("name", "weight")) == {"a": 90, "b": 10}


@pytest.mark.usefixtures("two_arms")
def test_the_deployment_page_and_its_live_fragment_show_every_variant_and_worker(owner: User) -> None:
    from django.test import Client

    browser = Client()
    browser.force_login(owner)
    page = browser.get("/deployments/ab/").content.decode()
    live = browser.get("/deployments/ab/live/")

    assert live.status_code == 200
    fragment = live.content.decode()
    for html in (page, fragment):
        assert "100% of traffic" in html
        assert "0% of traffic" in html
        assert html.count("ready") >= 2
    assert 'name="preset"' in page  # the split control is on the page, not in what refreshes
    assert 'name="preset"' not in fragment
