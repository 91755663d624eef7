"""One source per option: a bound changed in the option table moves every reader of the option.

The deploy form, the API's input serializer, the worker's command line and the
serving advice all read ``contracts.batching.BATCHING`` when they run, so a
table with a narrower max batch size is followed by each of them at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dashboard.advice import advise
from deployments.api.serializers import BatchingInput
from deployments.forms import DeploymentCreateForm
from deployments.services.batching import propose_batching
from inference_worker.cli import main
from inference_worker.contracts.batching import BATCHING, MAX_BATCH_SIZE, BatchingConfig
from inference_worker.contracts.errors import ContractError

NARROW = 16
REPORT: dict[str, Any] = {
    "profile": {
        "batches": [
            {"batch_size": 1, "onnxruntime_ms": 1.0},
            {"batch_size": 4, "onnxruntime_ms": 2.0},
            {"batch_size": 16, "onnxruntime_ms": 5.0},
            {"batch_size": 64, "onnxruntime_ms": 16.0},
        ]
    },
    "protocols": {"per_request_ms": {"http_json": 0.2, "http_binary": 0.02, "grpc": 0.03}},
}
"""A version's conversion report: batch 64 is the advice's pick under the real table (40 ms, 10,000 req/s)."""


@pytest.fixture
def narrow_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table with a max batch size of at most 16 (4096 in the real one)."""
    monkeypatch.setitem(BATCHING.fields, MAX_BATCH_SIZE.name, replace(MAX_BATCH_SIZE, high=NARROW))


def deploy_form(max_batch_size: int) -> DeploymentCreateForm:
    data: dict[str, Any] = {
        **{name: option.default for name, option in BATCHING.items()},
        "max_batch_size": max_batch_size,
        "preferred_batch_sizes": "",
        "name": "fraud",
        "version": 1,
        "replicas": 1,
        "device": "cpu",
        "backend": "process",
    }
    return DeploymentCreateForm(data=data)


def test_the_real_table_accepts_a_batch_of_32_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy_form(32).is_valid()
    assert BatchingInput(data={"max_batch_size": 32}).is_valid()
    assert (
        main(["serve", "--model-name", "m", "--model-path", "/nonexistent.onnx", "--max-batch-size", "32"])
        == 2
    )
    assert "max-batch-size" not in capsys.readouterr().err  # it got as far as opening the model
    assert advise(REPORT, budget_ms=40, target_rps=10_000).choice.batch_size == 64  # type: ignore[union-attr]


@pytest.mark.usefixtures("narrow_table")
def test_a_narrower_max_batch_size_in_the_table_is_followed_by_every_reader(
    capsys: pytest.CaptureFixture[str],
) -> None:
    form = deploy_form(32)
    assert not form.is_valid()
    assert "less than or equal to 16" in str(form.errors["max_batch_size"])
    assert deploy_form(NARROW).is_valid()

    serializer = BatchingInput(data={"max_batch_size": 32})
    assert not serializer.is_valid()
    assert "less than or equal to 16" in str(serializer.errors["max_batch_size"])

    assert (
        main(["serve", "--model-name", "m", "--model-path", "/nonexistent.onnx", "--max-batch-size", "32"])
        == 2
    )
    assert "--max-batch-size: must be between 1 and 16, not 32" in capsys.readouterr().err

    advice = advise(REPORT, budget_ms=40, target_rps=10_000)
    assert advice.choice is not None
    assert advice.choice.batch_size == NARROW
    assert {option.batch_size for option in advice.options} == {1, 4, 16}
    assert advice.deploy is not None
    assert advice.deploy["max_batch_size"] == "16"
    assert propose_batching(REPORT, latency_budget_ms=40).batching.max_batch_size == NARROW

    with pytest.raises(ContractError, match="max_batch_size: must be between 1 and 16"):
        BatchingConfig(max_batch_size=32)
