"""Gateway configuration: one frozen dataclass, one ``gateway`` flag per field.

Every flag also comes from ``KILN_GATEWAY_`` + the flag in upper snake case
(``--redis-url`` -> ``KILN_GATEWAY_REDIS_URL``); a flag beats the variable, the
variable beats the default, as for ``serve``. Bad values raise ``ConfigError``
with one line naming the flag (``cli.main`` exits 2 with it).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass

from inference_worker.cli import Option, _float, _int, _value
from inference_worker.config import MIB, ConfigError

ENV_PREFIX = "KILN_GATEWAY_"


class GatewayOption(Option):
    """A ``gateway`` flag; its variable is ``KILN_GATEWAY_<FLAG>``."""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").upper().replace("-", "_")


OPTIONS: tuple[GatewayOption, ...] = (
    GatewayOption("--host", "127.0.0.1", str, "address to listen on"),
    GatewayOption("--port", "8100", _int, "HTTP port (0: any free port)"),
    GatewayOption("--redis-url", "redis://127.0.0.1:6379/0", str, "Redis holding the routing table"),
    GatewayOption("--routing-key", "kiln:routing", str, "Redis key (and channel) of the routing table"),
    GatewayOption("--reload-interval-s", "5", _float, "seconds between periodic reloads of the table"),
    GatewayOption("--routing-key-header", "X-Routing-Key", str, "request header that makes the split sticky"),
    GatewayOption("--shadow-queue-size", "256", _int, "shadow copies waiting to be sent (dropped beyond)"),
    GatewayOption("--shadow-concurrency", "8", _int, "shadow copies in flight at once"),
    GatewayOption("--shadow-nice", "19", _int, "CPU niceness of the shadow process (0-19; 19: lowest)"),
    GatewayOption("--stats-interval-s", "1", _float, "seconds between stats snapshots written to Redis"),
    GatewayOption("--gateway-id", None, str, "this gateway's field in the stats hash (default: host-pid)"),
    GatewayOption("--upstream-timeout-s", "30", _float, "longest a replica may take to answer (504 beyond)"),
    GatewayOption("--connect-timeout-s", "2", _float, "longest a connection to a replica may take to open"),
    GatewayOption("--max-connections-per-replica", "128", _int, "open connections to one replica, at most"),
    GatewayOption("--max-body-bytes", str(64 * MIB), _int, "largest request body (413 beyond)"),
    GatewayOption("--drain-timeout-s", "30", _float, "longest SIGTERM waits for in-flight requests"),
    GatewayOption("--log-level", "info", str.lower, "debug, info, warning or error"),
)

_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything ``gateway`` needs; ``__post_init__`` names the flag of a bad value."""

    host: str = "127.0.0.1"
    port: int = 8100
    redis_url: str = "redis://127.0.0.1:6379/0"
    routing_key: str = "kiln:routing"
    reload_interval_s: float = 5.0
    routing_key_header: str = "X-Routing-Key"
    shadow_queue_size: int = 256
    shadow_concurrency: int = 8
    shadow_nice: int = 19
    stats_interval_s: float = 1.0
    gateway_id: str = "gateway"
    upstream_timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    max_connections_per_replica: int = 128
    max_body_bytes: int = 64 * MIB
    drain_timeout_s: float = 30.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        checks = (
            (0 <= self.port <= 65535, "--port: must be between 0 and 65535"),
            (
                re.match(r"^(redis|rediss|unix)://", self.redis_url) is not None,
                "--redis-url: expected a redis://, rediss:// or unix:// URL",
            ),
            (0 < len(self.routing_key) <= 256, "--routing-key: must be 1-256 characters"),
            (0.05 <= self.reload_interval_s <= 3600, "--reload-interval-s: must be between 0.05 and 3600"),
            (
                _HEADER.fullmatch(self.routing_key_header) is not None,
                "--routing-key-header: must be an HTTP header name",
            ),
            (1 <= self.shadow_queue_size <= 1_000_000, "--shadow-queue-size: must be between 1 and 1000000"),
            (1 <= self.shadow_concurrency <= 1024, "--shadow-concurrency: must be between 1 and 1024"),
            (0 <= self.shadow_nice <= 19, "--shadow-nice: must be between 0 and 19"),
            (0.05 <= self.stats_interval_s <= 3600, "--stats-interval-s: must be between 0.05 and 3600"),
            (
                _ID.fullmatch(self.gateway_id) is not None,
                "--gateway-id: must be 1-128 letters, digits, '_', '.', ':', '-'",
            ),
            (0.01 <= self.upstream_timeout_s <= 3600, "--upstream-timeout-s: must be between 0.01 and 3600"),
            (0.01 <= self.connect_timeout_s <= 600, "--connect-timeout-s: must be between 0.01 and 600"),
            (
                1 <= self.max_connections_per_replica <= 65536,
                "--max-connections-per-replica: must be between 1 and 65536",
            ),
            (1024 <= self.max_body_bytes <= 4096 * MIB, "--max-body-bytes: must be between 1 KiB and 4 GiB"),
            (0 < self.drain_timeout_s <= 3600, "--drain-timeout-s: must be between 0 and 3600"),
            (
                self.log_level in ("debug", "info", "warning", "error"),
                f"--log-level: {self.log_level!r} is not debug, info, warning or error",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gateway`` subcommand's flags."""
    for option in OPTIONS:
        shown = "" if option.default is None else f" [default: {option.default}]"
        parser.add_argument(option.flag, dest=option.dest, help=f"{option.help}{shown} (env {option.env})")


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The frozen configuration from flags, environment and defaults."""
    values = {option.dest: _value(args, option) for option in OPTIONS}
    if values["gateway_id"] is None:
        values["gateway_id"] = f"{socket.gethostname()}-{os.getpid()}"
    return GatewayConfig(**values)
