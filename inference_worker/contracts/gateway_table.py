"""Which routing table each gateway holds, for the platform to check that they all converged.

Each gateway writes its record into the Redis hash ``<routing key>:tables`` (``tables_key``),
field ``<gateway id>``, every stats interval::

    {"schema": "kiln.gateway-table/v1", "gateway_id": "host-123", "table_version": 1732700000123,
     "table_digest": "5e8f...", "reported_at": 1732700100.5}

``table_digest`` is ``routing.table_digest`` of the table the gateway serves: what it routes,
not when it was built, so the platform compares it with the digest of the table its database
gives now and republishes until every gateway agrees. It is ``""`` while the gateway holds no
table. A record that is not refreshed is a gateway that is gone (the platform ignores records
older than it allows; the hash expires when no gateway writes at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.wire import integer, mapping, number, text

SCHEMA = "kiln.gateway-table/v1"


def tables_key(routing_key: str) -> str:
    """The Redis hash of the gateways' records, beside the routing table's key."""
    return f"{routing_key}:tables"


@dataclass(frozen=True)
class GatewayTableRecord:
    """The table one gateway serves, as it said at ``reported_at`` (Unix seconds)."""

    gateway_id: str
    table_version: int
    table_digest: str
    reported_at: float


def encode_gateway_table(record: GatewayTableRecord) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "gateway_id": record.gateway_id,
        "table_version": record.table_version,
        "table_digest": record.table_digest,
        "reported_at": record.reported_at,
    }


def parse_gateway_table(payload: object) -> GatewayTableRecord:
    """The record in a decoded JSON value; ``ContractError`` names the first field refused."""
    item = mapping(payload, "gateway table")
    if item.get("schema") != SCHEMA:
        raise ContractError("schema", f"expected {SCHEMA!r}, got {item.get('schema')!r}")
    return GatewayTableRecord(
        gateway_id=text(item.get("gateway_id"), "gateway_id"),
        table_version=integer(item.get("table_version"), "table_version", low=0),
        table_digest=text(item.get("table_digest"), "table_digest"),
        reported_at=number(item.get("reported_at"), "reported_at", low=0),
    )
