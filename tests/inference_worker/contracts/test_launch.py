"""The launch spec: the command line the platform builds is the one the worker reads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inference_worker.cli import build_parser, config_from_args
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.launch import parse_launch
from tests.support.contract_samples import BATCHING, LAUNCH


def test_a_launch_spec_survives_its_command_line_and_environment() -> None:
    argv, environ = LAUNCH.argv(), LAUNCH.environment()

    assert "s3cret" not in argv
    assert environ == {"KILN_WORKER_REPORT_TOKEN": "s3cret"}
    assert parse_launch(argv, environ) == LAUNCH


def test_the_worker_reads_the_platform_s_command_line_into_its_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in LAUNCH.environment().items():
        monkeypatch.setenv(name, value)

    config, _ = config_from_args(build_parser().parse_args(LAUNCH.argv()))

    assert (config.model.name, config.model.version, config.model.device) == ("fraud", "3", "cuda:0")
    assert config.model.instance_count == BATCHING.instances
    assert config.batching.options(BATCHING.instances) == BATCHING
    assert (config.server.host, config.server.grpc_port, config.report.token) == ("0.0.0.0", -1, "s3cret")


def test_the_environment_carries_the_options_a_health_check_reads() -> None:
    placed = replace(LAUNCH, http_port=4001)

    assert placed.environment("host", "http_port") == {
        "KILN_WORKER_REPORT_TOKEN": "s3cret",
        "KILN_WORKER_HOST": "0.0.0.0",
        "KILN_WORKER_HTTP_PORT": "4001",
    }


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        ([], "argv"),
        (["gateway"], "argv"),
        (["serve", "--model-name"], "argv"),
        ([*LAUNCH.argv(), "--turbo", "1"], "--turbo"),
        ([*LAUNCH.argv(), "--report-token", "t"], "--report-token"),
        ([*LAUNCH.argv(), "--log-level", "debug"], "log_level"),
        ([*LAUNCH.argv(), "--max-batch-size", "many"], "max_batch_size"),
        ([*LAUNCH.argv(), "--max-batch-size", "5000"], "max_batch_size"),
        ([*LAUNCH.argv(), "--preferred-batch-sizes", "16,4"], "preferred_batch_sizes"),
        (["serve", "--model-name", "m"], "model_version"),
    ],
)
def test_a_command_line_the_worker_would_refuse_is_refused_naming_the_option(
    argv: list[str], field: str
) -> None:
    with pytest.raises(ContractError) as refused:
        parse_launch(argv, LAUNCH.environment())

    assert refused.value.field == field
