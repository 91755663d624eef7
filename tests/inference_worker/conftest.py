"""Real workers on free ports (in a thread of this process), the tiny models, small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tests.support import onnx_models
from tests.support.workers import RunningWorker, make_config, running

MODELS = ("mlp", "two_inputs", "static", "square", "strings", "doubling")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Paths of the tiny ONNX models, built once per session."""
    directory = tmp_path_factory.mktemp("models")
    return SimpleNamespace(
        **{name: getattr(onnx_models, name)(directory / f"{name}.onnx") for name in MODELS}
    )


@pytest.fixture(scope="module")
def mlp_worker(models: SimpleNamespace) -> Iterator[RunningWorker]:
    """The MLP with default batching, shared by a module's tests."""
    with running(make_config(models.mlp)) as handle:
        yield handle
