"""How the reconcile loop and the API treat a docker variant's worker image, with no engine involved:
no worker before the image is ready, a failed build fails the deployment, a rebuild, who may ask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Deployment, Variant, Worker, WorkerImage
from deployments.reconcile import reconcile_deployment
from deployments.services.images import ensure_worker_image, fail_worker_image
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def docker_variant(owner: User) -> Variant:
    """A deployment with one docker variant, made as rows (creating it through the API asks the engine)."""
    version = ready_version(owner)
    deployment = Deployment.objects.create(name="cnn-docker", model=version.model, created_by=owner)
    return Variant.objects.create(
        deployment=deployment, name="primary", version=version, replicas=2, backend="docker"
    )


def test_no_container_starts_before_the_image_is_ready_and_the_build_is_enqueued_once(
    docker_variant: Variant, owner_api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as first:
        reconcile_deployment(docker_variant.deployment_id)
    with django_capture_on_commit_callbacks() as second:
        reconcile_deployment(docker_variant.deployment_id)

    image = WorkerImage.objects.get()
    body = owner_api.get("/api/v1/deployments/cnn-docker/").json()
    assert (len(first), len(second)) == (1, 0)  # one build job, not one per pass
    assert not Worker.objects.exists()
    assert (body["status"], body["status_reason"]) == (
        "deploying",
        f"variant primary: building the worker image {image.tag}",
    )
    block = body["variants"][0]["image"]
    assert (block["status"], block["tag"], block["in_use"], block["flavour"]) == (
        "queued",
        image.tag,
        None,
        "cpu",
    )
    assert image.tag.startswith("kiln-worker/cnn:v1-cpu-")


def test_a_failed_image_build_fails_the_deployment_with_its_reason_and_a_rebuild_queues_it_again(
    docker_variant: Variant, owner_api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    image = ensure_worker_image(version=docker_variant.version, flavour="cpu")
    fail_worker_image(
        image_id=image.pk, attempt=None, reason="the image build failed: no space left on device"
    )

    reconcile_deployment(docker_variant.deployment_id)
    failed = owner_api.get("/api/v1/deployments/cnn-docker/").json()
    with django_capture_on_commit_callbacks() as enqueued:
        rebuilt = owner_api.post("/api/v1/deployments/cnn-docker/variants/primary/rebuild-image/")
    reconcile_deployment(docker_variant.deployment_id)
    after = owner_api.get("/api/v1/deployments/cnn-docker/").json()

    assert failed["status"] == "failed"
    assert failed["status_reason"] == (
        f"the worker image {image.tag} failed to build: the image build failed: no space left on device"
    )
    assert failed["variants"][0]["image"]["error"] == "the image build failed: no space left on device"
    assert not Worker.objects.exists()
    assert rebuilt.status_code == 202
    assert (rebuilt.json()["image"]["status"], rebuilt.json()["image"]["error"]) == ("queued", "")
    assert len(enqueued) == 1
    assert after["status"] == "deploying"
    assert WorkerImage.objects.count() == 1


@pytest.mark.parametrize(("persona", "status"), [("outsider", 403), ("anonymous", 401)])
def test_only_the_models_owners_may_ask_for_a_rebuild(
    docker_variant: Variant,
    persona: str,
    status: int,
    api_as: Callable[[User], APIClient],
    anonymous_api: APIClient,
    request: pytest.FixtureRequest,
) -> None:
    image = ensure_worker_image(version=docker_variant.version, flavour="cpu")
    fail_worker_image(image_id=image.pk, attempt=None, reason="broken")
    client = anonymous_api if persona == "anonymous" else api_as(request.getfixturevalue(persona))

    response = client.post("/api/v1/deployments/cnn-docker/variants/primary/rebuild-image/")

    assert response.status_code == status
    assert WorkerImage.objects.get().status == "failed"


def test_a_process_variant_has_no_image(owner: User, owner_api: APIClient) -> None:
    ready_version(owner)
    created = owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "backend": "process"}]},
        format="json",
    )

    assert created.status_code == 201
    assert created.json()["variants"][0]["image"] is None
