"""The batching options: one table of fields, and the value object both planes pass around."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest

from inference_worker.contracts.batching import BATCHING, BatchingConfig, encode_batching, parse_batching
from inference_worker.contracts.errors import ContractError
from tests.support.contract_samples import BATCHING as SAMPLE


def test_the_value_object_has_one_field_per_option_in_the_table_s_order() -> None:
    assert [f.name for f in fields(BatchingConfig)] == list(BATCHING)
    assert BatchingConfig().values() == {name: option.default for name, option in BATCHING.items()}


def test_batching_options_survive_encode_json_and_parse() -> None:
    assert parse_batching(json.loads(json.dumps(encode_batching(SAMPLE)))) == SAMPLE


def test_a_partial_object_keeps_the_base_and_reads_sizes_as_a_set() -> None:
    parsed = parse_batching({"max_queue_size": 8, "preferred_batch_sizes": [8, 4, 8]}, base=SAMPLE)

    assert parsed == BatchingConfig(
        **{**SAMPLE.values(), "max_queue_size": 8, "preferred_batch_sizes": (4, 8)}
    )


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ("32", "batching", "must be an object"),
        ({"max_batch_size": 0}, "max_batch_size", "must be between 1 and 4096, not 0"),
        ({"max_batch_size": 4097}, "max_batch_size", "must be between 1 and 4096"),
        ({"max_batch_size": True}, "max_batch_size", "must be an integer"),
        ({"max_queue_delay_ms": 1000.5}, "max_queue_delay_ms", "must be between 0 and 1000"),
        ({"max_queue_delay_ms": "2"}, "max_queue_delay_ms", "must be a number"),
        ({"preferred_batch_sizes": [64]}, "preferred_batch_sizes", "max batch size (32)"),
        ({"preferred_batch_sizes": "8,16"}, "preferred_batch_sizes", "list of integers"),
        ({"request_timeout_ms": 0}, "request_timeout_ms", "between 1 and 600000"),
        ({"instances": 17}, "instances", "between 1 and 16"),
        ({"turbo": 1}, "turbo", "is not a batching option"),
    ],
)
def test_a_bad_option_is_refused_naming_it(payload: Any, field: str, reason: str) -> None:
    with pytest.raises(ContractError) as refused:
        parse_batching(payload)

    assert refused.value.field == field
    assert reason in refused.value.reason


def test_the_options_in_words_say_what_a_zero_thread_count_means() -> None:
    words = BATCHING.describe(BatchingConfig(max_queue_delay_ms=2.5, intra_op_threads=0).values())
    assert words.startswith("max batch size 32, max queue delay 2.5 ms, ")
    assert words.endswith("instances 1, intra-op threads one per core")
    assert BATCHING.describe(BatchingConfig(intra_op_threads=2).values()).endswith("intra-op threads 2")
