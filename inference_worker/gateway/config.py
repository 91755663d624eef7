"""Gateway configuration: one frozen dataclass, one ``gateway`` flag per field.

Every flag also comes from ``KILN_GATEWAY_`` + the field in upper case
(``--redis-url`` -> ``KILN_GATEWAY_REDIS_URL``); a flag beats the variable, the
variable beats the default, as for ``serve`` (``inference_worker.options``). Bad values raise ``ConfigError``
with one line naming the flag (``cli.main`` exits 2 with it).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass

from inference_worker.config import MIB, ConfigError
from inference_worker.contracts.options import Kind, OptionField, OptionTable
from inference_worker.options import CommandOption, command_options, read_options

ENV_PREFIX = "KILN_GATEWAY_"
GATEWAY_ID: OptionField[str | None] = OptionField(
    "gateway_id", Kind.TEXT, None, "this gateway's field in the stats hash (default: host-pid)"
)
GATEWAY = OptionTable(
    OptionField("host", Kind.TEXT, "127.0.0.1", "address to listen on"),
    OptionField("port", Kind.INT, 8100, "HTTP port (0: any free port)"),
    OptionField("redis_url", Kind.TEXT, "redis://127.0.0.1:6379/0", "Redis holding the routing table"),
    OptionField("routing_key", Kind.TEXT, "kiln:routing", "Redis key (and channel) of the routing table"),
    OptionField("reload_interval_s", Kind.FLOAT, 5.0, "seconds between periodic reloads of the table"),
    OptionField(
        "routing_key_header", Kind.TEXT, "X-Routing-Key", "request header that makes the split sticky"
    ),
    OptionField("shadow_queue_size", Kind.INT, 256, "shadow copies waiting to be sent (dropped beyond)"),
    OptionField("shadow_concurrency", Kind.INT, 8, "shadow copies in flight at once"),
    OptionField("shadow_nice", Kind.INT, 19, "CPU niceness of the shadow process (0-19; 19: lowest)"),
    OptionField("stats_interval_s", Kind.FLOAT, 1.0, "seconds between stats snapshots written to Redis"),
    GATEWAY_ID,
    OptionField("upstream_timeout_s", Kind.FLOAT, 30.0, "longest a replica may take to answer (504 beyond)"),
    OptionField("connect_timeout_s", Kind.FLOAT, 2.0, "longest a connection to a replica may take to open"),
    OptionField("max_connections_per_replica", Kind.INT, 128, "open connections to one replica, at most"),
    OptionField("max_body_bytes", Kind.INT, 64 * MIB, "largest request body (413 beyond)"),
    OptionField("drain_timeout_s", Kind.FLOAT, 30.0, "longest SIGTERM waits for in-flight requests"),
    OptionField(
        "activator_queue_size",
        Kind.INT,
        1000,
        "requests held per variant scaled to zero while a replica starts (503 beyond)",
    ),
    OptionField(
        "activator_timeout_s",
        Kind.FLOAT,
        60.0,
        "longest a held request waits for a replica of a variant scaled to zero (503 after)",
    ),
    OptionField("log_level", Kind.LOWER, "info", "debug, info, warning or error"),
)
"""The ``gateway`` options; ``GatewayConfig`` has one field per entry, with no default of its own."""


def gateway_options() -> tuple[CommandOption, ...]:
    """The ``gateway`` flags, each with its ``KILN_GATEWAY_`` variable."""
    return command_options(GATEWAY.values(), ENV_PREFIX)


_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything ``gateway`` needs; ``__post_init__`` names the flag of a bad value."""

    host: str
    port: int
    redis_url: str
    routing_key: str
    reload_interval_s: float
    routing_key_header: str
    shadow_queue_size: int
    shadow_concurrency: int
    shadow_nice: int
    stats_interval_s: float
    gateway_id: str
    upstream_timeout_s: float
    connect_timeout_s: float
    max_connections_per_replica: int
    max_body_bytes: int
    drain_timeout_s: float
    activator_queue_size: int
    activator_timeout_s: float
    log_level: str

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
                1 <= self.activator_queue_size <= 1_000_000,
                "--activator-queue-size: must be between 1 and 1000000",
            ),
            (
                0.1 <= self.activator_timeout_s <= 3600,
                "--activator-timeout-s: must be between 0.1 and 3600",
            ),
            (
                self.log_level in ("debug", "info", "warning", "error"),
                f"--log-level: {self.log_level!r} is not debug, info, warning or error",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The frozen configuration from flags, environment and defaults."""
    values = read_options(args, gateway_options())
    gateway_id = values.gateway_id or f"{socket.gethostname()}-{os.getpid()}"
    return GatewayConfig(**{**values.pick(GATEWAY), GATEWAY_ID.name: gateway_id})
