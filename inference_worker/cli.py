"""Command line: ``inference-worker serve|gateway ...`` (also ``python -m inference_worker``).

One ``serve`` flag per field of the worker's option table
(``contracts.worker_options.SERVE``); each also comes from an environment
variable named ``KILN_WORKER_`` + the field in upper case (``--max-batch-size``
-> ``KILN_WORKER_MAX_BATCH_SIZE``); a flag beats the variable, the variable
beats the default (``options``). ``KILN_WORKER_REPORT_TOKEN_FILE`` reads the
token from a file (container secrets). Bad values exit with status 2 and one
line naming the option. The ``gateway`` subcommand's flags are in
``gateway.config`` (its variables start with ``KILN_GATEWAY_``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from inference_worker import __version__
from inference_worker.config import (
    ConfigError,
    DynamicBatching,
    Limits,
    ModelConfig,
    ReportConfig,
    ServerConfig,
    SharedMemoryConfig,
    WorkerConfig,
    refused,
)
from inference_worker.contracts.batching import BATCHING, BatchingConfig
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.labels import parse_labels_text
from inference_worker.contracts.warmup import parse_warmup_text
from inference_worker.contracts.worker_options import ENV_PREFIX, SERVE
from inference_worker.options import CommandOption, add_arguments, command_options, read_options

LOG_LEVELS = ("debug", "info", "warning", "error")


def serve_options() -> tuple[CommandOption, ...]:
    """The ``serve`` flags, read from the option table now (it is the one source)."""
    return command_options(SERVE.values(), ENV_PREFIX)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="inference-worker", description="Kiln's ONNX inference worker (Open Inference Protocol)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="serve one ONNX model over HTTP and gRPC")
    add_arguments(serve, serve_options())
    from inference_worker.gateway import config as gateway_config

    gateway = commands.add_parser("gateway", help="one address splitting traffic between deployment variants")
    add_arguments(gateway, gateway_config.gateway_options())
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[WorkerConfig, str]:
    """The frozen configuration (and log level) from flags, environment and defaults."""
    v = read_options(args, serve_options())
    try:
        batching = BatchingConfig(**v.pick(BATCHING))
        warmup = parse_warmup_text(v.warmup_inputs)
        class_labels = parse_labels_text(v.class_labels)
    except ContractError as exc:
        raise refused(exc) from None
    config = WorkerConfig(
        model=ModelConfig(
            name=v.model_name,
            path=Path(v.model_path),
            version=v.model_version,
            sha256=v.model_sha256,
            device=v.device,
            instance_count=batching.instances,
            intra_op_num_threads=batching.intra_op_threads,
            allow_spinning=v.intra_op_spinning,
            inline_below_us=v.inline_below_us,
            warmup=warmup,
            class_labels=class_labels,
        ),
        batching=DynamicBatching.from_options(batching),
        limits=Limits(
            max_body_bytes=v.max_body_bytes,
            max_grpc_message_bytes=v.max_grpc_message_bytes,
            max_tensor_elements=v.max_tensor_elements,
            max_queue_bytes=v.max_queue_bytes,
        ),
        server=ServerConfig(
            host=v.host,
            http_port=v.http_port,
            grpc_port=v.grpc_port,
            drain_timeout_s=v.drain_timeout_s,
            shutdown_delay_s=v.shutdown_delay_s,
            listen_file=v.listen_file,
        ),
        report=ReportConfig(
            url=v.report_url,
            token=v.report_token,
            interval_s=v.report_interval_s,
            worker_id=v.worker_id or f"{socket.gethostname()}-{os.getpid()}",
        ),
        shared_memory=SharedMemoryConfig(
            enabled=v.system_shared_memory, max_regions=v.max_shm_regions, max_bytes=v.max_shm_bytes
        ),
    )
    if v.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level: {v.log_level!r} is not debug, info, warning or error")
    return config, str(v.log_level)


def _run(config: WorkerConfig) -> int:
    from inference_worker.server import Worker

    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(Worker(config).serve())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inference-worker`` and ``python -m inference_worker``."""
    args = build_parser().parse_args(argv)
    if args.command == "gateway":
        from inference_worker.gateway.main import main as gateway_main

        return gateway_main(args)
    try:
        config, level = config_from_args(args)
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        # httpx logs every request at INFO: one line per report every few seconds. The reporter says
        # itself what matters (a failure, the recovery, a change of state).
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
        return _run(config)
    except ConfigError as exc:
        print(f"inference-worker: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"inference-worker: error: cannot listen: {exc}", file=sys.stderr)
        return 2
