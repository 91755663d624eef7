"""Batching proposals come from the measured profile; bad options are refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.errors import InvalidDeploymentError
from deployments.services.batching import propose_batching, validate_batching
from tests.support.versions import PROFILE


@pytest.mark.parametrize(
    ("budget", "max_batch", "delay"),
    [
        (50.0, 32, 2.45),
        (20.0, 32, 0.2),
        (6.0, 8, 0.65),
        (1.2, 1, 0.12),
    ],
)
def test_the_largest_batch_whose_latency_fits_the_budget_is_proposed(
    budget: float, max_batch: int, delay: float
) -> None:
    proposal, note = propose_batching(PROFILE, latency_budget_ms=budget)

    batches: list[dict[str, float]] = PROFILE["profile"]["batches"]  # type: ignore[index]
    rows = [r for r in batches if 2 * r["onnxruntime_ms"] <= budget]
    expected = rows[-1]
    assert proposal.max_batch_size == expected["batch_size"]
    assert proposal.max_queue_delay_ms == pytest.approx(
        min(budget - 2 * expected["onnxruntime_ms"], expected["onnxruntime_ms"] / 4), abs=0.01
    )
    assert f"Batch {expected['batch_size']}" in note
    assert f"{budget:g} ms" in note


def test_a_budget_below_batch_one_turns_batching_off() -> None:
    proposal, note = propose_batching(PROFILE, latency_budget_ms=0.5)

    assert proposal.max_batch_size == 1
    assert "batching is off" in note


def test_a_fixed_batch_model_gets_no_batching() -> None:
    proposal, note = propose_batching({**PROFILE, "dynamic_batch": False}, latency_budget_ms=50)

    assert proposal.max_batch_size == 1
    assert "fixed batch" in note


def test_without_a_profile_the_defaults_are_used_and_said_so() -> None:
    proposal, note = propose_batching({}, latency_budget_ms=50)

    assert proposal.max_batch_size == 32
    assert "No latency profile" in note


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": "big"}, "max_batch_size"),
        ({"max_queue_delay_ms": -1}, "max_queue_delay_ms"),
        ({"max_queue_delay_ms": 10_000}, "max_queue_delay_ms"),
        ({"preferred_batch_sizes": [64]}, "preferred_batch_sizes"),
        ({"preferred_batch_sizes": "8,16"}, "preferred_batch_sizes"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"request_timeout_ms": 0}, "request_timeout_ms"),
        ({"instances": 99}, "instances"),
        ({"instances": True}, "instances"),
    ],
)
def test_nonsense_batching_options_are_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidDeploymentError, match=f"^batching.{field}"):
        validate_batching(options, prefix="batching.")
