"""Worker images pushed to a registry leave it as they leave the engine: a deleted version's tags
in the job after the deletion, superseded ones on the prune pass. A real ``docker-registry`` on a
loopback port (the engine pushes to it over plain HTTP, as to any insecure registry); a registry
that does not allow deletes keeps the tag with a line that says so, and one that does not answer
gets the tag again on the job's retry or the next pass.
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from config.outbox.models import OutboxMessage
from deployments.backends.base import BackendError
from deployments.backends.docker_images import push_image
from deployments.models import ImageStatus, WorkerImage
from deployments.services.image_cleanup import prune_superseded_images, remove_worker_images
from registry.models import ModelVersion
from tests.support import image_registry
from tests.support.image_registry import LocalRegistry
from tests.support.versions import ready_version

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

REPOSITORY = f"kiln-test-registry-cleanup-{os.getpid()}"


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    if image_registry.missing():
        pytest.skip(image_registry.missing())
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        pytest.skip(f"no Docker engine answers ({exc}); run: bash .ci/setup.d/docker.sh")
    yield client
    for image in client.images.list(filters={"label": "kiln.test.registry-cleanup"}):
        client.images.remove(image.id, force=True)
    client.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    served = LocalRegistry(tmp_path / "registry")
    served.start()
    yield served
    served.stop()


def _pushed_image(
    client: docker.DockerClient, registry: LocalRegistry, version: ModelVersion, code: str
) -> WorkerImage:
    """An image of its own (one small layer, built in a second) under a tag in ``registry``, pushed."""
    tag = f"{registry.address}/{REPOSITORY}/{version.model.name}:v{version.version}-cpu-{code}"
    image, _ = client.images.build(
        fileobj=_context(), custom_context=True, tag=tag, rm=True, network_mode="none"
    )
    push_image(client.api, tag, log=lambda line: None)
    assert registry.has(*_parts(tag, registry))
    return WorkerImage.objects.create(
        key=uuid.uuid4().hex,
        version=version,
        flavour="cpu",
        worker_code_hash=code,
        base_image="scratch",
        tag=tag,
        image_id=str(image.id),
        status=ImageStatus.READY,
    )


def _context() -> io.BytesIO:
    files = {
        "Dockerfile": b"FROM scratch\nLABEL kiln.test.registry-cleanup=1\nCOPY stamp /stamp\n",
        "stamp": uuid.uuid4().hex.encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _parts(tag: str, registry: LocalRegistry) -> tuple[str, str]:
    repository, _, reference = tag.removeprefix(f"{registry.address}/").rpartition(":")
    return repository, reference


def _in(registry: LocalRegistry, image: WorkerImage) -> bool:
    return registry.has(*_parts(image.tag, registry))


def test_a_deleted_versions_images_leave_the_registry_after_the_engine(
    engine: docker.DockerClient, registry: LocalRegistry, owner: User, owner_api: APIClient
) -> None:
    one, two = (ready_version(owner, model="cleanup", number=n) for n in (1, 2))
    images_of_one = [_pushed_image(engine, registry, one, code) for code in ("old", "new")]
    image_of_two = _pushed_image(engine, registry, two, "new")

    assert owner_api.delete("/api/v1/models/cleanup/versions/1/").status_code == 204
    message = OutboxMessage.objects.get(task="deployments.remove_worker_images")
    outcome = remove_worker_images(*message.args)  # what the job runs

    assert outcome == {image.tag: "removed; registry: deleted" for image in images_of_one}
    assert not any(_in(registry, image) for image in images_of_one)
    assert _in(registry, image_of_two)  # another version's tag in the same repository stays
    assert remove_worker_images([image_of_two.tag]) == {image_of_two.tag: "kept (still named)"}
    again = remove_worker_images([images_of_one[0].tag])
    assert again == {images_of_one[0].tag: "absent; registry: absent"}


def test_a_superseded_image_leaves_the_registry_on_the_prune_pass(
    engine: docker.DockerClient, registry: LocalRegistry, owner: User
) -> None:
    one = ready_version(owner, model="cleanup", number=1)
    old, new = _pushed_image(engine, registry, one, "old"), _pushed_image(engine, registry, one, "new")

    assert prune_superseded_images() == {"removed": 1, "in_use": 0, "failed": 0}

    assert not _in(registry, old)
    assert _in(registry, new)
    assert list(WorkerImage.objects.values_list("pk", flat=True)) == [new.pk]


def test_a_registry_that_does_not_allow_deletes_keeps_the_tag_and_says_why(
    engine: docker.DockerClient, tmp_path: Path, owner: User
) -> None:
    registry = LocalRegistry(tmp_path / "no-deletes", deletes=False)
    registry.start()
    try:
        image = _pushed_image(engine, registry, ready_version(owner, model="cleanup"), "only")
        WorkerImage.objects.all().delete()  # as when the version went

        outcome = remove_worker_images([image.tag])  # no error: a retry would not change the answer

        assert outcome == {
            image.tag: "removed; registry: refused: the registry does not allow deletes "
            "(its storage.delete.enabled is off)"
        }
        assert _in(registry, image)
    finally:
        registry.stop()


def test_a_registry_that_does_not_answer_gets_the_tag_again_later(
    engine: docker.DockerClient, registry: LocalRegistry, owner: User
) -> None:
    one = ready_version(owner, model="cleanup", number=1)
    old, new = _pushed_image(engine, registry, one, "old"), _pushed_image(engine, registry, one, "new")
    gone = _pushed_image(engine, registry, ready_version(owner, model="cleanup", number=2), "gone")
    WorkerImage.objects.filter(pk=gone.pk).delete()  # as when its version went
    registry.stop()

    with pytest.raises(BackendError, match=f"not removed yet, tried again later: {gone.tag} \\(the registry"):
        remove_worker_images([gone.tag])  # the job's retry runs it again later
    counts = prune_superseded_images()
    assert counts == {"removed": 0, "in_use": 0, "failed": 1}
    assert WorkerImage.objects.filter(pk=old.pk).exists()  # its row stays for the next pass

    registry.start(port=int(registry.address.rpartition(":")[2]))
    assert remove_worker_images([gone.tag]) == {gone.tag: "absent; registry: deleted"}
    assert prune_superseded_images() == {"removed": 1, "in_use": 0, "failed": 0}
    assert not _in(registry, gone)
    assert not _in(registry, old)
    assert _in(registry, new)


@pytest.mark.parametrize("tokens", [False, True], ids=["basic", "bearer-token"])
def test_a_registry_that_asks_for_credentials_gets_the_platforms(
    engine: docker.DockerClient, tmp_path: Path, owner: User, settings: Any, tokens: bool
) -> None:
    settings.KILN_DOCKER_REGISTRY_USERNAME, settings.KILN_DOCKER_REGISTRY_PASSWORD = "kiln", "s3cret pass"
    registry = LocalRegistry(tmp_path / "with-login", user=("kiln", "s3cret pass"), tokens=tokens)
    registry.start()
    try:
        version = ready_version(owner, model="cleanup")
        kept, gone = (_pushed_image(engine, registry, version, code) for code in ("kept", "gone"))
        WorkerImage.objects.filter(pk=gone.pk).delete()

        settings.KILN_DOCKER_REGISTRY_PASSWORD = "not it"
        refused = remove_worker_images([gone.tag])
        assert refused[gone.tag].startswith("removed; registry: refused: the registry answered 401")
        settings.KILN_DOCKER_REGISTRY_PASSWORD = "s3cret pass"
        assert remove_worker_images([gone.tag]) == {gone.tag: "absent; registry: deleted"}

        assert not _in(registry, gone)
        assert _in(registry, kept)
        if registry.tokens is not None:  # the platform asked its token server for what it does
            assert f"repository:{REPOSITORY}/cleanup:pull,delete" in registry.tokens.issued
    finally:
        registry.stop()
