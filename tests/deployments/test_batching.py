"""Batching proposals come from the measured profile; bad options are refused by name."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from deployments.errors import InvalidDeploymentError
from deployments.models import Variant
from deployments.reconcile import spec_hash
from deployments.services.batching import propose_batching, validate_batching
from registry.models import ModelVersion
from tests.support.versions import PROFILE


@pytest.mark.parametrize(
    ("budget", "max_batch", "delay"),
    [
        (50.0, 64, 4.875),  # 2 x 19.5 fits 50; the delay is a quarter of 19.5
        (20.0, 32, 0.4),  # 2 x 9.8 fits 20; the delay is what is left
        (6.0, 8, 0.65),
        (1.2, 1, 0.0),  # a batch of one is full at once: nothing to wait for
    ],
)
def test_the_largest_batch_whose_latency_fits_the_budget_is_proposed(
    budget: float, max_batch: int, delay: float
) -> None:
    proposal = propose_batching(PROFILE, latency_budget_ms=budget)

    batches: list[dict[str, float]] = PROFILE["profile"]["batches"]  # type: ignore[index]
    rows = [r for r in batches if 2 * r["onnxruntime_ms"] <= budget]
    expected = rows[-1]
    assert proposal.batching.max_batch_size == max_batch == expected["batch_size"]
    assert proposal.batching.max_queue_delay_ms == pytest.approx(delay, abs=0.01)
    assert f"Batch {expected['batch_size']}" in proposal.note
    assert f"{budget:g} ms" in proposal.note


def test_a_budget_below_batch_one_turns_batching_off() -> None:
    proposal = propose_batching(PROFILE, latency_budget_ms=0.5)

    assert proposal.batching.max_batch_size == 1
    assert "batching is off" in proposal.note


def test_a_fixed_batch_model_gets_no_batching() -> None:
    proposal = propose_batching({**PROFILE, "dynamic_batch": False}, latency_budget_ms=50)

    assert proposal.batching.max_batch_size == 1
    assert "fixed batch" in proposal.note


def test_without_a_profile_the_defaults_are_used_and_said_so() -> None:
    proposal = propose_batching({}, latency_budget_ms=50)

    assert proposal.batching.max_batch_size == 32
    assert "No latency profile" in proposal.note


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


def test_the_spec_hash_lists_the_options_as_before_so_running_workers_do_not_roll() -> None:
    version = ModelVersion(onnx_sha256="ab" * 32)
    variant = Variant(
        version=version,
        max_batch_size=16,
        max_queue_delay_ms=2.5,
        preferred_batch_sizes=[16, 4, 8],
        max_queue_size=512,
        request_timeout_ms=1500.0,
        instances=2,
        gpu_ids=[1],
        backend="docker",
        image="kiln-worker/m:v1",
    )
    before_the_table = {
        "version": None,
        "onnx": "ab" * 32,
        "batching": [16, 2.5, [4, 8, 16], 512, 1500.0, 2],
        "gpu_ids": [1],
        "backend": "docker",
        "image": "kiln-worker/m:v1",
    }

    expected = hashlib.sha256(json.dumps(before_the_table, sort_keys=True).encode()).hexdigest()[:32]
    assert spec_hash(variant) == expected
    variant.intra_op_threads = 1  # an option added later rolls the workers once it is set
    assert spec_hash(variant) != expected


def test_the_proposal_note_adds_up_as_printed() -> None:
    profile = {"profile": {"batches": [{"batch_size": 1, "onnxruntime_ms": 0.0144}]}}
    proposal = propose_batching(profile, latency_budget_ms=50)

    assert "2 × 0.0144 = 0.0288 ms" in proposal.note
