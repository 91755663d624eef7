"""Concurrent uploads never share a version number (PostgreSQL, real threads)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from registry import services
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
