"""Autoscaling in the web UI and the admin: the form per variant, its refusals, what the page shows."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from deployments.autoscaling.models import ScalingDecision, ScalingPolicy
from deployments.autoscaling.table import defaults
from deployments.inputs import VariantSpec, VersionTarget
from deployments.models import Variant
from deployments.services.deployments import create_deployment
from registry.models import AuditEvent
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def variant(owner: User) -> Variant:
    version = ready_version(owner)
    deployment = create_deployment(
        name="fraud",
        model=version.model,
        variants=[VariantSpec(target=VersionTarget(version=1), replicas=2)],
        actor=owner,
    )
    return deployment.variants.get()


def token(web: Client, page: str) -> str:
    """The CSRF token a page's forms post (the client checks it, as a browser's server would)."""
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', web.get(page).content.decode())
    assert found
    return found.group(1)


def post(web: Client, **fields: Any) -> Any:
    url = reverse("deployments:variant-autoscaling", args=["fraud", "primary"])
    csrf = token(web, reverse("deployments:list"))
    return web.post(url, {**fields, "csrfmiddlewaretoken": csrf}, follow=True)


def test_the_page_offers_a_form_per_variant_and_saving_it_turns_autoscaling_on(
    variant: Variant, owner: User, web_as: Callable[[User], Client]
) -> None:
    web = web_as(owner)
    page = web.get(reverse("deployments:detail", args=["fraud"])).content.decode()
    assert 'id="autoscaling-primary-min_replicas"' in page
    assert "off: 2 fixed replicas" in page

    saved = post(web, **{**defaults(), "min_replicas": 0, "max_replicas": 3, "idle_before_zero_s": 90})

    html = saved.content.decode()
    assert "Autoscaling of primary saved." in html
    assert "Autoscaling: 0 to 3 replicas at 4.0 requests in flight each; to zero after 90 s" in html
    policy = ScalingPolicy.objects.get(variant=variant)
    assert (policy.min_replicas, policy.max_replicas, policy.idle_before_zero_s) == (0, 3, 90.0)
    assert AuditEvent.objects.filter(action="variant.autoscaling_changed", actor=owner).count() == 1

    off = post(web, off="1")
    assert "Autoscaling of primary saved." in off.content.decode()
    assert not ScalingPolicy.objects.exists()


def test_a_bad_policy_is_refused_with_a_message_naming_the_field(
    variant: Variant, owner: User, web_as: Callable[[User], Client]
) -> None:
    web = web_as(owner)

    refused = post(web, **{**defaults(), "min_replicas": 4, "max_replicas": 3})
    out_of_bounds = post(web, **{**defaults(), "target_in_flight": 0})

    assert "min_replicas: 4 is above max_replicas (3)" in refused.content.decode()
    assert "target_in_flight: " in out_of_bounds.content.decode()
    assert not ScalingPolicy.objects.exists()


def test_outsiders_cannot_change_a_policy(
    variant: Variant, outsider: User, web_as: Callable[[User], Client]
) -> None:
    response = post(web_as(outsider), **defaults())

    assert "Autoscaling of primary saved." not in response.content.decode()
    assert not ScalingPolicy.objects.exists()
    assert not AuditEvent.objects.filter(action="variant.autoscaling_changed").exists()


def test_the_page_shows_the_decisions_with_what_they_saw(
    variant: Variant, owner: User, web_as: Callable[[User], Client]
) -> None:
    ScalingPolicy.objects.create(variant=variant, min_replicas=1, max_replicas=4)
    ScalingDecision.objects.create(
        variant=variant, from_replicas=1, to_replicas=3, reason="load_up", short_load=5.5, long_load=1.25
    )

    html = web_as(owner).get(reverse("deployments:live", args=["fraud"])).content.decode()

    assert '<tr data-reason="load_up">' in html
    assert "1 → 3" in html
    assert "Load rose" in html
    assert "5.50" in html


def test_the_admin_sets_a_policy_through_the_service_and_refuses_a_bad_one(
    variant: Variant, staff: User, web_as: Callable[[User], Client]
) -> None:
    web = web_as(staff)
    url = reverse("admin:deployments_scalingpolicy_add")
    form = {**defaults(), "variant": variant.pk, "csrfmiddlewaretoken": token(web, url)}

    refused = web.post(url, {**form, "min_replicas": 5, "max_replicas": 2})
    saved = web.post(url, {**form, "max_replicas": 6}, follow=True)

    assert refused.status_code == 200
    assert "min_replicas: 5 is above max_replicas (2)" in refused.content.decode()
    assert saved.status_code == 200
    assert ScalingPolicy.objects.get(variant=variant).max_replicas == 6
    assert AuditEvent.objects.filter(action="variant.autoscaling_changed", actor=staff).exists()


def test_the_dashboard_series_has_replicas_over_time_beside_the_load(
    variant: Variant, staff: User, api_as: Callable[[User], Any]
) -> None:
    ScalingDecision.objects.create(
        variant=variant, from_replicas=2, to_replicas=4, reason="load_up", short_load=9.0, long_load=3.0
    )

    data = api_as(staff).get(reverse("api:dashboard-series", args=["fraud"])).json()

    primary = data["variants"]["primary"]
    assert len(primary["replicas"]) == len(primary["desired_replicas"]) == len(data["t"])
    assert (primary["desired_replicas"][0], primary["desired_replicas"][-1]) == (2, 4)
    assert set(primary["replicas"]) == {0}  # no worker reported yet
    assert "requests_per_s" in primary
