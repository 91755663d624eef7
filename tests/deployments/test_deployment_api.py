"""The deployments API: creation with validation errors that name the field, and who may do what."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from deployments.models import Deployment, Variant
from deployments.services.deployments import MAX_VARIANTS
from registry.models import AuditEvent
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def create(client: APIClient, **overrides: Any) -> Any:
    body = {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 2}], **overrides}
    return client.post("/api/v1/deployments/", body, format="json")


def test_a_deployment_is_created_with_batching_proposed_from_the_profile(
    owner: User, owner_api: APIClient
) -> None:
    ready_version(owner)

    response = create(owner_api, latency_budget_ms=6)

    assert response.status_code == 201, response.content
    body = response.json()
    variant = body["variants"][0]
    assert body["status"] == "deploying"
    assert body["endpoint"]["infer"].endswith("/v2/models/cnn-prod/infer")
    assert variant["name"] == "primary"
    assert variant["weight"] == 100
    assert variant["replicas"] == 2
    assert variant["device"] == "cpu"
    assert variant["batching"]["max_batch_size"] == 8
    assert "Batch 8 takes 2.6 ms" in variant["batching_note"]
    assert AuditEvent.objects.filter(action="deployment.created", subject="deployment/cnn-prod").exists()


def test_user_batching_options_override_the_proposal(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)

    response = create(
        owner_api, variants=[{"version": 1, "batching": {"max_batch_size": 4, "max_queue_delay_ms": 1}}]
    )

    assert response.status_code == 201
    batching = response.json()["variants"][0]["batching"]
    assert (batching["max_batch_size"], batching["max_queue_delay_ms"]) == (4, 1.0)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"version": 9}], "variants[0].version: model 'cnn' has no version 9"),
        ([{"version": 2}], "variants[0].version: cnn v2 is converting, not ready"),
        ([{"alias": "nope"}], "variants[0].alias: model 'cnn' has no alias 'nope'"),
        ([{}], "variants[0].version: give either a version number or an alias"),
        ([{"version": 1, "replicas": 99}], "variants[0].replicas"),
        ([{"version": 1, "replicas": -1}], "variants[0].replicas"),
        ([{"version": 1, "device": "cuda:0"}], "variants[0].device"),
        ([{"version": 1, "device": "gpu please"}], "variants[0].device"),
        ([{"version": 1, "backend": "kubernetes"}], "variants[0].backend"),
        ([{"version": 1, "batching": {"max_batch_size": 0}}], "variants[0].batching.max_batch_size"),
        (
            [{"version": 1, "batching": {"preferred_batch_sizes": [128], "max_batch_size": 8}}],
            "variants[0].batching.preferred_batch_sizes",
        ),
        (
            [{"version": 1, "weight": 60}, {"name": "b", "version": 1, "weight": 30}],
            "weights must add up to 100",
        ),
        ([{"version": 1}, {"version": 1, "name": "primary", "weight": 0}], "variant names must be unique"),
        ([], "variants"),
        (
            [{"version": 1, "weight": 100}]
            + [{"name": f"v{i}", "version": 1, "weight": 0} for i in range(MAX_VARIANTS)],
            f"variants: at most {MAX_VARIANTS} variants",
        ),
    ],
)
def test_invalid_deployments_are_400s_naming_the_field(
    owner: User, owner_api: APIClient, variants: list[dict[str, Any]], message: str
) -> None:
    ready_version(owner)
    ready_version(owner, number=2, status="converting")

    response = create(owner_api, variants=variants)

    assert response.status_code == 400, response.content
    assert message in response.json()["message"]
    assert not Deployment.objects.exists()


def test_duplicate_names_and_unknown_models_are_refused(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)
    assert create(owner_api).status_code == 201

    duplicate = create(owner_api)
    unknown = create(owner_api, name="other", model="nope")

    assert duplicate.status_code == 409
    assert unknown.status_code == 404


def test_scaling_changing_version_and_stopping_are_audited(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)
    ready_version(owner, number=2)
    create(owner_api)

    scaled = owner_api.post(
        "/api/v1/deployments/cnn-prod/variants/primary/scale/", {"replicas": 3}, format="json"
    )
    rolled = owner_api.put(
        "/api/v1/deployments/cnn-prod/variants/primary/version/", {"version": 2}, format="json"
    )
    bad_scale = owner_api.post(
        "/api/v1/deployments/cnn-prod/variants/primary/scale/", {"replicas": 1000}, format="json"
    )
    stopped = owner_api.post("/api/v1/deployments/cnn-prod/stop/")

    assert scaled.status_code == 202
    assert scaled.json()["replicas"] == 3
    assert rolled.json()["version"] == 2
    assert bad_scale.status_code == 400
    assert "replicas" in bad_scale.json()["message"]
    assert stopped.json()["desired_running"] is False
    actions = list(
        AuditEvent.objects.filter(subject="deployment/cnn-prod")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [
        "deployment.created",
        "variant.scaled",
        "variant.version_changed",
        "deployment.stopped",
    ]


def test_with_the_immediate_policy_a_variant_with_traffic_follows_its_alias_at_once_recorded_as_forced(
    owner: User, owner_api: APIClient
) -> None:
    ready_version(owner)
    ready_version(owner, number=2)
    owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json")
    create(owner_api, on_alias_move="immediate", variants=[{"alias": "production"}])

    from deployments.services.alias_moves import follow_alias
    from registry.models import Alias

    owner_api.put("/api/v1/models/cnn/aliases/production/", {"version": 2}, format="json")
    follow_alias(alias=Alias.objects.get(name="production"))  # on_commit does this outside a test transaction

    variant = Variant.objects.get()
    assert variant.version.version == 2
    assert variant.alias == "production"
    event = AuditEvent.objects.filter(action="variant.version_changed").get()
    assert event.reason == (
        "alias production moved to v2; the deployment's policy is immediate: "
        "followed at once (forced by olivia)"
    )
    assert (event.after or {})["forced"] is True
    assert event.actor_label == "olivia"


def test_only_owner_team_and_staff_may_deploy(
    owner: User, outsider: User, api_as: Callable[[User], APIClient], anonymous_api: APIClient
) -> None:
    ready_version(owner)

    refused = create(api_as(outsider))
    anonymous = create(anonymous_api)

    assert refused.status_code == 403
    assert anonymous.status_code == 401
    assert not Deployment.objects.exists()


def test_a_new_variant_starts_at_weight_zero(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)
    ready_version(owner, number=2)
    create(owner_api)

    added = owner_api.post(
        "/api/v1/deployments/cnn-prod/variants/", {"name": "candidate", "version": 2}, format="json"
    )
    weighted = owner_api.post(
        "/api/v1/deployments/cnn-prod/variants/", {"name": "other", "version": 2, "weight": 10}, format="json"
    )

    assert added.status_code == 201
    assert added.json()["weight"] == 0
    assert weighted.status_code == 400


def test_a_deployment_takes_variants_up_to_the_limit(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)
    create(owner_api)
    for i in range(MAX_VARIANTS - 1):
        added = owner_api.post(
            "/api/v1/deployments/cnn-prod/variants/", {"name": f"v{i}", "version": 1}, format="json"
        )
        assert added.status_code == 201, added.content

    one_more = owner_api.post(
        "/api/v1/deployments/cnn-prod/variants/", {"name": "extra", "version": 1}, format="json"
    )

    assert one_more.status_code == 400
    assert one_more.json()["message"] == f"variants: at most {MAX_VARIANTS} variants"
    assert Variant.objects.count() == MAX_VARIANTS


def test_variants_whose_versions_take_different_requests_are_named_in_warnings(
    owner: User, owner_api: APIClient
) -> None:
    ready_version(owner, number=1)
    ready_version(owner, number=2)
    narrowed = ready_version(owner, number=3)
    narrowed.signature = {
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": [1, 4]},
            {"name": "mask", "dtype": "int64", "shape": [-1]},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 2]}],
    }
    narrowed.save()
    same = [{"name": "a", "version": 1, "weight": 90}, {"name": "b", "version": 2, "weight": 10}]
    differ = [{"name": "a", "version": 1, "weight": 90}, {"name": "b", "version": 3, "weight": 10}]

    alike = create(owner_api, variants=same)
    unlike = create(owner_api, name="cnn-canary", variants=differ)

    assert alike.status_code == 201, alike.content
    assert alike.json()["warnings"] == []
    assert unlike.status_code == 201, unlike.content
    (warning,) = unlike.json()["warnings"]
    assert warning.startswith("variants 'a' (v1) and 'b' (v3) take different requests (")
    assert "input 'x' is float32 [-1, 4] in one, float32 [1, 4] in the other" in warning
    assert "input 'mask' is taken by one only" in warning
    assert "output(s) 'logits', 'y' answered by one only" in warning
    assert owner_api.get("/api/v1/deployments/cnn-canary/").json()["warnings"] == [warning]
    browser = Client()
    browser.force_login(owner)
    page = browser.get("/deployments/cnn-canary/")
    assert page.status_code == 200
    assert "take different requests" in page.content.decode()
