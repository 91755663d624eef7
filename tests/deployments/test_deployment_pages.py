"""The deployment pages as a person reads them: ready counts in words, a request that can be pasted,
a free name for the next variant, readable rollout states, promote confirmed and explained, and a
live region whose refresh shows what the page showed."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from deployments.inputs import VariantSpec, VersionTarget
from deployments.models import Deployment, Rollout
from deployments.services.deployments import add_variant, create_deployment
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def _deployment(owner: User, *, candidate: bool = False) -> Deployment:
    version = ready_version(owner)
    deployment = create_deployment(
        name="fraud",
        model=version.model,
        actor=owner,
        variants=[VariantSpec(VersionTarget(1), name="primary")],
    )
    if candidate:
        ready_version(owner, number=2)
        add_variant(deployment=deployment, spec=VariantSpec(VersionTarget(2), name="candidate"), actor=owner)
    return deployment


def _live_region(page: str) -> str:
    """What the page shows inside its refreshed region (up to the section that follows it)."""
    start = page.index(">", page.index("<div data-fragment=")) + 1
    end = min(
        page.find(marker, start) % (len(page) + 1)
        for marker in ('<section aria-labelledby="autoscaling-h">', '<section aria-labelledby="add-h">')
    )
    return page[start : page.rindex("</div>", start, end)]


def test_the_list_says_how_many_replicas_are_ready_in_words(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    _deployment(owner)
    page = web_as(owner).get(reverse("deployments:list")).content.decode()

    assert "primary: 0 of 1 ready" in page
    assert "●" not in page


def test_the_curl_example_is_the_signature_with_protocol_datatypes(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    _deployment(owner)
    page = web_as(owner).get(reverse("deployments:detail", args=["fraud"])).content.decode()
    example = html.unescape(re.search(r"<pre[^>]*data-curl-example[^>]*>(.*?)</pre>", page, re.S)[1])  # type: ignore[index]

    assert '"datatype": "FP32", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]' in example
    assert "/v2/models/fraud/infer" in example


def test_add_a_variant_proposes_a_name_no_variant_has(owner: User, web_as: Callable[[User], Client]) -> None:
    _deployment(owner, candidate=True)
    page = web_as(owner).get(reverse("deployments:detail", args=["fraud"])).content.decode()

    assert 'id="add-name" name="name" value="candidate-2"' in page


def test_promote_asks_first_and_then_says_what_serves(owner: User, web_as: Callable[[User], Client]) -> None:
    deployment = _deployment(owner, candidate=True)
    deployment.variants.update(weight=0)
    deployment.variants.filter(name="primary").update(weight=100)
    web = web_as(owner)
    page = web.get(reverse("deployments:detail", args=["fraud"])).content.decode()
    assert 'data-confirm="Promote candidate? The stable variant takes v2 (forced and recorded)' in page

    client = Client()
    client.force_login(owner)
    # The promotion is refused while the candidate has no ready replica; the page says why.
    answer = client.post(reverse("deployments:promote", args=["fraud", "candidate"]), follow=True)
    assert answer.status_code == 200
    assert "candidate" in answer.content.decode()


def test_rollout_states_read_as_words(owner: User, web_as: Callable[[User], Client]) -> None:
    deployment = _deployment(owner, candidate=True)
    variants = {v.name: v for v in deployment.variants.all()}
    Rollout.objects.create(
        deployment=deployment,
        candidate=variants["candidate"],
        baseline=variants["primary"],
        steps=[5, 100],
        hold_s=60,
        max_error_rate=0.01,
        max_p99_ms=250,
        state=Rollout.State.ROLLED_BACK,
        reason="p99 above the objective",
        created_by=owner,
    )
    page = web_as(owner).get(reverse("deployments:detail", args=["fraud"])).content.decode()

    assert '<span class="status status-rolled_back" data-status="rolled_back">Rolled back</span>' in page


def test_the_live_region_refreshes_to_what_the_page_showed(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    _deployment(owner, candidate=True)
    web = web_as(owner)
    page = web.get(reverse("deployments:detail", args=["fraud"])).content.decode()
    fragment = web.get(reverse("deployments:live", args=["fraud"])).content.decode()

    assert _without_csrf(fragment) == _without_csrf(_live_region(page))


def _without_csrf(text: str) -> str:
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", text).strip()
