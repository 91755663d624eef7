"""Worker images leave a real Docker engine once nothing will run them again: superseded images
(a newer ready image of the same version and flavour) on the prune pass, the images of a deleted
version in a job after the deletion; one a variant names or a container runs stays.

The images are made in seconds from the local base image (a label, no layer), not by the platform's
build; the docker backend's own test deletes a version whose image the platform built.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from config.outbox.models import OutboxMessage
from deployments.backends.base import BackendError
from deployments.models import Deployment, ImageStatus, Variant, WorkerImage
from deployments.services import image_cleanup
from deployments.services.image_cleanup import prune_superseded_images, remove_worker_images
from registry.models import ModelVersion
from tests.support.versions import ready_version

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

BASE_IMAGE = os.environ.get("KILN_DOCKER_BASE_IMAGE", "kiln/python-base:bookworm")
REPOSITORY = f"kiln-test-cleanup-{os.getpid()}"


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=120)
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"the base image {BASE_IMAGE} is missing; run: bash .ci/setup.d/docker.sh")
    except (docker.errors.DockerException, OSError) as exc:
        pytest.skip(f"no Docker engine answers at {where} ({exc}); run: bash .ci/setup.d/docker.sh")
    yield client
    for container in client.containers.list(all=True, filters={"label": "kiln.test.cleanup"}):
        container.remove(force=True)
    for image in client.images.list(filters={"reference": f"{REPOSITORY}/*"}):
        client.images.remove(image.id, force=True)
    client.close()


def _image_on_engine(client: docker.DockerClient, tag: str) -> str:
    """An image of its own under ``tag`` (the base image plus a label, built in seconds)."""
    image, _ = client.images.build(
        fileobj=_dockerfile(f"FROM {BASE_IMAGE}\nLABEL kiln.test.cleanup={uuid.uuid4().hex}\n"),
        tag=tag,
        rm=True,
        network_mode="none",
    )
    return str(image.id)


def _dockerfile(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


def _has(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _ready_image(client: docker.DockerClient, version: ModelVersion, code: str) -> WorkerImage:
    tag = f"{REPOSITORY}/{version.model.name}:v{version.version}-cpu-{code}"
    image_id = _image_on_engine(client, tag)
    return WorkerImage.objects.create(
        key=uuid.uuid4().hex,
        version=version,
        flavour="cpu",
        worker_code_hash=code,
        base_image=BASE_IMAGE,
        tag=tag,
        image_id=image_id,
        status=ImageStatus.READY,
    )


def test_a_superseded_image_leaves_the_engine_with_its_row_unless_a_variant_or_container_keeps_it(
    engine: docker.DockerClient, owner: User
) -> None:
    one, two, three = (ready_version(owner, model="cleanup", number=n) for n in (1, 2, 3))
    old_one, new_one = _ready_image(engine, one, "old"), _ready_image(engine, one, "new")
    old_two, new_two = _ready_image(engine, two, "old"), _ready_image(engine, two, "new")
    old_three, new_three = _ready_image(engine, three, "old"), _ready_image(engine, three, "new")
    only_gpu = _ready_image(engine, three, "gpu")
    WorkerImage.objects.filter(pk=only_gpu.pk).update(flavour="gpu")  # no newer image of its flavour
    deployment = Deployment.objects.create(name="cleanup", model=one.model, created_by=owner)
    Variant.objects.create(deployment=deployment, name="a", version=two, backend="docker", image=old_two.tag)
    engine.containers.create(old_three.tag, command="true", labels={"kiln.test.cleanup": "1"})

    first = prune_superseded_images()
    again = prune_superseded_images()

    assert first == {"removed": 1, "in_use": 1, "failed": 0}
    assert again == {"removed": 0, "in_use": 1, "failed": 0}  # the container still holds it
    assert not _has(engine, old_one.tag)
    assert not WorkerImage.objects.filter(pk=old_one.pk).exists()
    kept = [new_one, old_two, new_two, old_three, new_three, only_gpu]
    assert all(_has(engine, image.tag) for image in kept)
    assert set(WorkerImage.objects.values_list("pk", flat=True)) == {image.pk for image in kept}


def test_a_deleted_versions_images_leave_the_engine_after_the_commit(
    engine: docker.DockerClient, owner: User, owner_api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    one, two = (
        ready_version(owner, model="cleanup", number=1),
        ready_version(owner, model="cleanup", number=2),
    )
    images_of_one = [_ready_image(engine, one, "old"), _ready_image(engine, one, "new")]
    image_of_two = _ready_image(engine, two, "new")

    with django_capture_on_commit_callbacks() as sent:
        deleted = owner_api.delete("/api/v1/models/cleanup/versions/1/")
    assert deleted.status_code == 204, deleted.content
    message = OutboxMessage.objects.get(task="deployments.remove_worker_images")
    assert message.args == [sorted(image.tag for image in images_of_one)]
    assert sent  # its delivery waits for the commit
    assert not WorkerImage.objects.filter(version_id=one.pk).exists()
    outcome = remove_worker_images(*message.args)  # what the job runs

    assert outcome == {image.tag: "removed" for image in images_of_one}
    assert not any(_has(engine, image.tag) for image in images_of_one)
    assert _has(engine, image_of_two.tag)
    assert remove_worker_images([image_of_two.tag]) == {image_of_two.tag: "kept (still named)"}
    assert remove_worker_images([images_of_one[0].tag]) == {images_of_one[0].tag: "absent"}


def test_images_held_by_containers_do_not_keep_a_pass_from_younger_superseded_ones(
    engine: docker.DockerClient, owner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_cleanup, "PRUNE_BATCH", 1)
    one = ready_version(owner, model="cleanup", number=1)
    held, free, newest = (_ready_image(engine, one, code) for code in ("held", "free", "newest"))
    engine.containers.create(held.tag, command="true", labels={"kiln.test.cleanup": "1"})

    counts = prune_superseded_images()

    assert counts == {"removed": 1, "in_use": 1, "failed": 0}  # the held one was oldest, and a page
    assert not _has(engine, free.tag)
    assert _has(engine, held.tag)
    assert _has(engine, newest.tag)
    assert set(WorkerImage.objects.values_list("pk", flat=True)) == {held.pk, newest.pk}


def test_a_deleted_versions_image_a_container_holds_is_tried_again_and_a_refused_tag_holds_up_no_other(
    engine: docker.DockerClient, owner: User
) -> None:
    one = ready_version(owner, model="cleanup", number=1)
    held, free = _ready_image(engine, one, "held"), _ready_image(engine, one, "free")
    container = engine.containers.create(held.tag, command="true", labels={"kiln.test.cleanup": "1"})
    tags = ["Not A Valid Reference", held.tag, free.tag]
    WorkerImage.objects.all().delete()  # as when the version went

    with pytest.raises(BackendError, match=f"{held.tag} \\(a container still runs it\\)"):
        remove_worker_images(tags)  # the job's retry runs it again later
    assert not _has(engine, free.tag)
    assert _has(engine, held.tag)

    container.remove()
    outcome = remove_worker_images(tags)

    assert outcome[held.tag] == "removed"
    assert outcome[free.tag] == "absent"
    assert outcome["Not A Valid Reference"].startswith("refused: the Docker engine did not remove")
    assert not _has(engine, held.tag)
