"""Concurrent uploads never share a version number (PostgreSQL, real threads)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from registry import services
from registry.errors import DuplicateUploadError
from registry.models import ModelVersion, RegisteredModel
from tests.support.torch_models import save_onnx_cnn


@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_get_distinct_consecutive_numbers(tmp_path: Path) -> None:
    assert connection.vendor == "postgresql"
    owner = User.objects.create_user("olivia")
    model = RegisteredModel.objects.create(name="race", owner=owner)
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    uploads = 8
    barrier = threading.Barrier(uploads)
    errors: list[BaseException] = []

    def register(index: int) -> None:
        try:
            copy = tmp_path / f"copy-{index}.onnx"
            copy.write_bytes(path.read_bytes())
            barrier.wait()
            services.register_version(model=model, upload_path=copy, actor=owner, enqueue_conversion=False)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=register, args=(i,)) for i in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    numbers = sorted(ModelVersion.objects.filter(model=model).values_list("version", flat=True))
    assert numbers == list(range(1, uploads + 1))
    assert RegisteredModel.objects.get(pk=model.pk).latest_version == uploads


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("if_exists", ["existing", "refuse"])
def test_concurrent_uploads_of_the_same_bytes_register_them_once(tmp_path: Path, if_exists: str) -> None:
    """A CI job retried while its first run still uploads: if_exists is decided under the model's
    lock, so one upload registers the bytes and the others get that version (or the refusal)."""
    owner = User.objects.create_user("olivia")
    model = RegisteredModel.objects.create(name="retried", owner=owner)
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    uploads = 6
    barrier = threading.Barrier(uploads)
    outcomes: list[object] = []

    def register(index: int) -> None:
        try:
            copy = tmp_path / f"copy-{index}.onnx"
            copy.write_bytes(path.read_bytes())
            barrier.wait()
            outcomes.append(
                services.register_version(
                    model=model, upload_path=copy, actor=owner, enqueue_conversion=False, if_exists=if_exists
                )
            )
        except BaseException as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=register, args=(i,)) for i in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert list(ModelVersion.objects.filter(model=model).values_list("version", flat=True)) == [1]
    created = [o for o in outcomes if isinstance(o, services.Registration) and o.created]
    assert len(created) == 1
    others = [o for o in outcomes if o not in created]
    if if_exists == "existing":
        assert all(isinstance(o, services.Registration) and o.version.version == 1 for o in others)
    else:
        assert all(isinstance(o, DuplicateUploadError) and o.code == "duplicate_upload" for o in others), (
            others
        )
