"""The routing table the platform publishes is built with the contract the gateway reads."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from deployments.models import Deployment, Variant, Worker, WorkerState
from deployments.services.routing import build_routing_table
from inference_worker.contracts.routing import encode_table, parse_table
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def test_ready_workers_are_replicas_and_one_no_gateway_could_reach_is_left_out(owner: User) -> None:
    version = ready_version(owner)
    deployment = Deployment.objects.create(name="fraud", model=version.model, created_by=owner)
    variant = Variant.objects.create(deployment=deployment, name="a", version=version, pinned_version=version)
    for url in ("http://127.0.0.1:40123", "not-a-url"):
        Worker.objects.create(
            variant=variant, version=version, backend="process", state=WorkerState.READY, http_url=url
        )

    table = build_routing_table()

    (replica,) = table.deployments["fraud"].variants[0].replicas
    assert (replica.url, replica.version) == ("http://127.0.0.1:40123", "1")
    assert parse_table(encode_table(table)) == table  # what the gateway reads back
