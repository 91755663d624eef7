"""A version page's live numbers: every variant that serves the version, from its recent reports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deployments.models import Deployment, Report, Variant, Worker
from deployments.series import version_numbers
from registry.models import ModelVersion
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def _serving(owner: User, version: ModelVersion, name: str, *, ready: int, requests: int) -> Variant:
    deployment = Deployment.objects.create(name=name, model=version.model, created_by=owner)
    variant = Variant.objects.create(deployment=deployment, name="primary", version=version, weight=100)
    workers = [
        Worker.objects.create(variant=variant, version=version, backend="process", state=state)
        for state in ["ready"] * ready + ["stopped"]
    ]
    if requests:
        now = timezone.now()
        Report.objects.create(
            worker=workers[-1],
            variant=variant,
            deployment=deployment,
            version_number=version.version,
            start=now - timedelta(seconds=10),
            end=now,
            seconds=10.0,
            requests=requests,
            outcomes={"200": requests},
            latency_histogram={"le": [1.0, 10.0, "+Inf"], "counts": [requests, 0, 0]},
        )
    return variant


def test_every_serving_variant_is_listed_with_its_ready_replicas_and_requests_in_three_queries(
    owner: User,
) -> None:
    version = ready_version(owner)
    _serving(owner, version, "fraud", ready=2, requests=30)
    _serving(owner, version, "search", ready=0, requests=6)  # no replica left, but it served in the window
    _serving(owner, version, "idle", ready=0, requests=0)  # nothing to show
    version_id = version.pk

    with CaptureQueriesContext(connection) as queries:
        rows = version_numbers(version_id, window_s=60)

    assert len(queries) == 3
    by_deployment = {row["deployment"]: row for row in rows}
    assert set(by_deployment) == {"fraud", "search"}
    assert by_deployment["fraud"]["replicas_ready"] == 2
    assert by_deployment["search"]["replicas_ready"] == 0
    assert by_deployment["fraud"]["requests"] == 30
    assert by_deployment["search"]["requests"] == 6
