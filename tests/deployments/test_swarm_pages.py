"""What people see of the swarm backend without a swarm: the deploy form's choices and placement boxes,
its refusals, and a swarm variant's page with its placement and the node of each worker."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from deployments.inputs import VariantSpec
from deployments.models import Deployment, Worker
from deployments.reconcile import reconcile_deployment
from deployments.services.deployments import create_deployment
from registry.models import RegisteredModel
from tests.support.memory_backend import memory_service_backend
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def _form(web: Client, url: str) -> tuple[str, dict[str, Any]]:
    """The page, and what its form posts as it stands (the proposed batching, the CSRF token)."""
    page = web.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert csrf
    return html, {**page.context["form"].initial, "csrfmiddlewaretoken": csrf.group(1)}


def test_the_deploy_form_offers_the_swarm_and_refuses_placement_for_a_backend_that_does_not_place(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    version = ready_version(owner)
    web = web_as(owner)
    url = reverse("deployments:create", args=[version.model.name, version.version])
    html, initial = _form(web, url)
    assert re.findall(r'<option value="(\w+)"', html)[:3] == ["process", "docker", "swarm"]
    assert 'name="constraints"' in html
    assert 'name="spread"' in html

    posted: dict[str, Any] = {
        **initial,
        "name": "fraud",
        "version": version.version,
        "replicas": 1,
        "device": "cpu",
        "backend": "process",
        "constraints": "node.labels.kiln.gpu==true",
        "spread": "",
        "description": "",
    }
    refused = web.post(url, posted)

    assert refused.status_code == 400
    assert (
        "only a backend that places replicas on several machines (swarm) takes it" in refused.content.decode()
    )
    assert not Deployment.objects.exists()

    bad = web.post(url, {**posted, "constraints": "node.labels.gpu = true; rm -rf /"})
    assert bad.status_code == 400
    assert "is not a constraint such as node.labels.kiln.gpu==true" in bad.content.decode()


def test_a_swarm_variants_page_shows_its_placement_and_the_node_of_every_worker(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    ready_version(owner)
    with memory_service_backend() as swarm:
        deployment = create_deployment(
            name="fraud",
            model=RegisteredModel.objects.get(name="cnn"),
            variants=[
                VariantSpec.parse(
                    {
                        "version": 1,
                        "replicas": 2,
                        "backend": "memory-swarm",
                        "placement": {"constraints": ["node.role==worker"], "spread": ["node.labels.zone"]},
                    }
                )
            ],
            actor=owner,
        )
        reconcile_deployment(deployment.pk)
        swarm.schedule()
        reconcile_deployment(deployment.pk)

    page = web_as(owner).get(reverse("deployments:live", args=["fraud"])).content.decode()

    assert "node.role==worker" in page
    assert "spread over" in page
    assert "node.labels.zone" in page
    assert sorted(Worker.objects.values_list("node", flat=True)) == ["node-a", "node-b"]
    assert page.count('<td class="mono">node-a</td>') == 1
    assert page.count('<td class="mono">node-b</td>') == 1
