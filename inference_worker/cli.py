"""Command line: ``inference-worker serve|gateway ...`` (also ``python -m inference_worker``).

Every ``serve`` option also comes from an environment variable named
``KILN_WORKER_`` + the flag in upper snake case (``--max-batch-size`` ->
``KILN_WORKER_MAX_BATCH_SIZE``); a flag beats the variable, the variable
beats the default. ``KILN_WORKER_REPORT_TOKEN_FILE`` reads the token from a
file (container secrets). Bad values exit with status 2 and one line naming
the option. The ``gateway`` subcommand's flags are in ``gateway_config`` (its
variables start with ``KILN_GATEWAY_``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from inference_worker import __version__
from inference_worker.config import (
    ConfigError,
    DynamicBatching,
    Limits,
    ModelConfig,
    ReportConfig,
    ServerConfig,
    WorkerConfig,
)

ENV_PREFIX = "KILN_WORKER_"


def _int(text: str) -> int:
    return int(text.strip().replace("_", ""))


def _float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(_int(part) for part in text.split(",") if part.strip())


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
        raise ValueError(text)
    return lowered in ("1", "true", "on", "yes")


@dataclass(frozen=True)
class Option:
    """One ``serve`` flag, its environment variable, default and parser."""

    flag: str
    default: str | None
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("--model-name", None, str, "name clients use in URLs and requests (required)"),
    Option("--model-path", None, Path, "the ONNX file to serve (required)"),
    Option("--model-version", "1", str, "version clients may name"),
    Option("--model-sha256", None, str.lower, "refuse to start unless the file has this digest"),
    Option("--host", "127.0.0.1", str, "address to listen on"),
    Option("--http-port", "8080", _int, "HTTP port (0: any free port)"),
    Option("--grpc-port", "8081", _int, "gRPC port (0: any free port, -1: no gRPC)"),
    Option("--device", "cpu", str, "cpu or cuda:N (falls back to the CPU, with a warning, without CUDA)"),
    Option("--instances", "1", _int, "model instances (sessions) running batches concurrently"),
    Option("--intra-op-threads", "0", _int, "ONNX Runtime threads per instance (0: one per core)"),
    Option("--intra-op-spinning", "off", _switch, "ONNX Runtime threads spin-wait between parallel sections"),
    Option("--max-batch-size", "32", _int, "largest batch the batcher forms"),
    Option("--max-queue-delay-ms", "0", _float, "longest a request waits for a batch to fill (0: no wait)"),
    Option("--preferred-batch-sizes", "", _sizes, "comma-separated sizes sent as soon as reached"),
    Option("--max-queue-size", "1024", _int, "queued requests beyond which new ones get 503 at once"),
    Option("--request-timeout-ms", "10000", _float, "a request still queued after this gets 504"),
    Option("--max-body-bytes", str(64 << 20), _int, "largest HTTP body (413 beyond)"),
    Option("--max-grpc-message-bytes", str(64 << 20), _int, "largest gRPC message"),
    Option("--max-tensor-elements", str(1 << 24), _int, "largest element count of one tensor"),
    Option("--max-queue-bytes", str(1 << 30), _int, "input bytes queued, all requests together (503 beyond)"),
    Option("--drain-timeout-s", "30", _float, "longest SIGTERM waits for in-flight requests"),
    Option("--shutdown-delay-s", "0", _float, "after SIGTERM, keep serving this long before draining"),
    Option("--listen-file", "", str, "write the bound address and ports here (JSON) once listening"),
    Option("--report-url", None, str, "platform URL the worker POSTs reports to"),
    Option("--report-token", None, str, "bearer token for reports (or KILN_WORKER_REPORT_TOKEN_FILE)"),
    Option("--report-interval-s", "5", _float, "seconds between reports"),
    Option("--worker-id", None, str, "identity in reports (default: hostname-pid)"),
    Option("--log-level", "info", str.lower, "debug, info, warning or error"),
)


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
    for option in OPTIONS:
        shown = "" if option.default is None else f" [default: {option.default or 'none'}]"
        serve.add_argument(option.flag, dest=option.dest, help=f"{option.help}{shown} (env {option.env})")
    from inference_worker import gateway_config

    gateway = commands.add_parser("gateway", help="one address splitting traffic between deployment variants")
    gateway_config.add_arguments(gateway)
    return parser


def _value(args: argparse.Namespace, option: Option) -> Any:
    text = getattr(args, option.dest)
    if text is None:
        text = os.environ.get(option.env)
    if text is None and option.flag == "--report-token":
        text = _read_secret(option.env + "_FILE")
    if text is None:
        text = option.default
    if text is None:
        return None
    try:
        return option.parse(text)
    except (ValueError, TypeError):
        raise ConfigError(f"{option.flag} (or {option.env}): invalid value {text!r}") from None


def _read_secret(variable: str) -> str | None:
    path = os.environ.get(variable)
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc.strerror}") from None


def config_from_args(args: argparse.Namespace) -> tuple[WorkerConfig, str]:
    """The frozen configuration (and log level) from flags, environment and defaults."""
    v = {option.dest: _value(args, option) for option in OPTIONS}
    for required in ("model_name", "model_path"):
        if v[required] is None:
            flag = "--" + required.replace("_", "-")
            raise ConfigError(f"{flag} (or {ENV_PREFIX}{required.upper()}) is required")
    config = WorkerConfig(
        model=ModelConfig(
            name=v["model_name"],
            path=v["model_path"],
            version=v["model_version"],
            sha256=v["model_sha256"],
            device=v["device"],
            instance_count=v["instances"],
            intra_op_num_threads=v["intra_op_threads"],
            allow_spinning=v["intra_op_spinning"],
        ),
        batching=DynamicBatching(
            max_batch_size=v["max_batch_size"],
            preferred_batch_sizes=v["preferred_batch_sizes"],
            max_queue_delay_microseconds=round(v["max_queue_delay_ms"] * 1000),
            max_queue_size=v["max_queue_size"],
            default_timeout_microseconds=round(v["request_timeout_ms"] * 1000),
        ),
        limits=Limits(
            max_body_bytes=v["max_body_bytes"],
            max_grpc_message_bytes=v["max_grpc_message_bytes"],
            max_tensor_elements=v["max_tensor_elements"],
            max_queue_bytes=v["max_queue_bytes"],
        ),
        server=ServerConfig(
            host=v["host"],
            http_port=v["http_port"],
            grpc_port=v["grpc_port"],
            drain_timeout_s=v["drain_timeout_s"],
            shutdown_delay_s=v["shutdown_delay_s"],
            listen_file=v["listen_file"],
        ),
        report=ReportConfig(
            url=v["report_url"],
            token=v["report_token"],
            interval_s=v["report_interval_s"],
            worker_id=v["worker_id"] or f"{socket.gethostname()}-{os.getpid()}",
        ),
    )
    if v["log_level"] not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: {v['log_level']!r} is not debug, info, warning or error")
    return config, v["log_level"]


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
        from inference_worker.gateway import main as gateway_main

        return gateway_main(args)
    try:
        config, level = config_from_args(args)
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        return _run(config)
    except ConfigError as exc:
        print(f"inference-worker: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"inference-worker: error: cannot listen: {exc}", file=sys.stderr)
        return 2
