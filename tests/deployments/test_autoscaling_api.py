"""A variant's autoscaling policy through the API: defaults, bounds as 400s naming the field, audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.autoscaling.models import ScalingPolicy
from deployments.autoscaling.table import AUTOSCALING, defaults
from deployments.services.routing import build_routing_table
from registry.models import AuditEvent
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db
URL = "/api/v1/deployments/cnn-prod/variants/primary/autoscaling/"


@pytest.fixture
def deployed(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)
    body = {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 1}]}
    assert owner_api.post("/api/v1/deployments/", body, format="json").status_code == 201


def put(client: APIClient, **policy: Any) -> Any:
    return client.put(URL, policy, format="json")


@pytest.mark.usefixtures("deployed")
def test_a_policy_takes_the_defaults_for_what_is_left_out_and_moves_replicas_into_its_bounds(
    owner_api: APIClient,
) -> None:
    response = put(owner_api, min_replicas=2, max_replicas=5)

    assert response.status_code == 202, response.content
    variant = response.json()
    assert variant["replicas"] == 2
    policy = variant["autoscaling"]
    assert {name: policy[name] for name in AUTOSCALING} == {
        **defaults(),
        "min_replicas": 2,
        "max_replicas": 5,
    }
    assert variant["scaling_decisions"] == []
    assert variant["cold_start_s"] is None


@pytest.mark.usefixtures("deployed")
def test_a_change_keeps_the_options_it_does_not_name_and_every_change_is_audited(
    owner_api: APIClient,
) -> None:
    put(owner_api, min_replicas=0, max_replicas=3, idle_before_zero_s=30)
    changed = put(owner_api, target_in_flight=8)
    removed = owner_api.delete(URL)

    assert changed.json()["autoscaling"]["idle_before_zero_s"] == 30.0
    assert changed.json()["autoscaling"]["target_in_flight"] == 8.0
    assert removed.status_code == 202
    assert removed.json()["autoscaling"] is None
    assert removed.json()["replicas"] == 1
    assert not ScalingPolicy.objects.exists()
    events = list(AuditEvent.objects.filter(action="variant.autoscaling_changed").order_by("id"))
    assert len(events) == 3
    assert events[0].before is None
    assert (events[1].before or {})["target_in_flight"] == 4.0
    assert (events[1].after or {})["target_in_flight"] == 8.0
    assert events[2].after == {"variant": "primary", "replicas": 1}


@pytest.mark.usefixtures("deployed")
@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"max_replicas": 65}, "max_replicas"),
        ({"max_replicas": 17}, "max_replicas"),  # KILN_MAX_REPLICAS
        ({"min_replicas": -1}, "min_replicas"),
        ({"target_in_flight": 0}, "target_in_flight"),
        ({"upscale_delay_s": "soon"}, "upscale_delay_s"),
        ({"downscale_delay_s": 0.5}, "downscale_delay_s"),
        ({"idle_before_zero_s": 100_000}, "idle_before_zero_s"),
        ({"max_replica": 3}, "max_replica"),
    ],
)
def test_a_bad_policy_is_a_400_naming_the_field_and_changes_nothing(
    owner_api: APIClient, settings: Any, policy: dict[str, Any], field: str
) -> None:
    settings.KILN_MAX_REPLICAS = 16

    response = put(owner_api, **policy)

    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith(field), response.json()
    assert not ScalingPolicy.objects.exists()


@pytest.mark.usefixtures("deployed")
def test_only_people_who_may_change_the_model_set_a_policy(
    outsider: User, api_as: Callable[[User], APIClient], anonymous_api: APIClient
) -> None:
    assert put(api_as(outsider), max_replicas=3).status_code == 403
    assert put(anonymous_api, max_replicas=3).status_code == 401
    assert not ScalingPolicy.objects.exists()


@pytest.mark.usefixtures("deployed")
def test_the_routing_table_marks_a_variant_that_may_scale_to_zero(owner_api: APIClient) -> None:
    put(owner_api, min_replicas=1)
    assert build_routing_table().deployments["cnn-prod"].variants[0].activate is False

    put(owner_api, min_replicas=0)
    assert build_routing_table().deployments["cnn-prod"].variants[0].activate is True
