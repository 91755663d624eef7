"""Concurrent uploads never share a version number, and register the same bytes once when asked
(PostgreSQL, real threads)."""

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


def upload_at_once(
    model: RegisteredModel, tmp_path: Path, uploads: int, if_exists: str = "new"
) -> list[object]:
    """``uploads`` threads register the same file at the same moment; each one's Registration or error."""
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    barrier = threading.Barrier(uploads)
    outcomes: list[object] = []

    def register(index: int) -> None:
        try:
            copy = tmp_path / f"copy-{index}.onnx"
            copy.write_bytes(path.read_bytes())
            barrier.wait()
            outcomes.append(
                services.register_version(
                    model=model,
                    upload_path=copy,
                    actor=model.owner,
                    enqueue_conversion=False,
                    if_exists=if_exists,
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
    return outcomes


@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_get_distinct_consecutive_numbers(tmp_path: Path) -> None:
    assert connection.vendor == "postgresql"
    model = RegisteredModel.objects.create(name="race", owner=User.objects.create_user("olivia"))

    outcomes = upload_at_once(model, tmp_path, 8)

    assert all(isinstance(o, services.Registration) and o.created for o in outcomes), outcomes
    numbers = sorted(ModelVersion.objects.filter(model=model).values_list("version", flat=True))
    assert numbers == list(range(1, 9))
    assert RegisteredModel.objects.get(pk=model.pk).latest_version == 8


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("if_exists", ["existing", "refuse"])
def test_concurrent_uploads_of_the_same_bytes_register_them_once(tmp_path: Path, if_exists: str) -> None:
    """A CI job retried while its first run still uploads: if_exists is decided under the model's
    lock, so one upload registers the bytes and the others get that version (or the refusal)."""
    model = RegisteredModel.objects.create(name="retried", owner=User.objects.create_user("olivia"))

    outcomes = upload_at_once(model, tmp_path, 6, if_exists=if_exists)

    assert list(ModelVersion.objects.filter(model=model).values_list("version", flat=True)) == [1]
    created = [o for o in outcomes if isinstance(o, services.Registration) and o.created]
    assert len(created) == 1
    others = [o for o in outcomes if o not in created]
    if if_exists == "existing":
        assert all(isinstance(o, services.Registration) and o.version.version == 1 for o in others)
    else:
        refused = [o for o in others if isinstance(o, DuplicateUploadError) and o.code == "duplicate_upload"]
        assert refused == others
