"""Activation: a gateway asks the platform to start a replica of a variant scaled to zero.

A gateway holding requests for a variant without a replica (the routing table
marks it ``activate``) writes this record into the Redis hash
``<routing key>:activate``, field ``<deployment>/<variant>``, and publishes the
field's name on the channel of the same name; it writes again every second
while it still holds requests, so a lost write heals. The platform's autoscaler
reads and clears the hash on every tick and scales the variant to at least one
replica; the new routing table lists the replica and the gateway forwards what
it holds. Format::

    {"schema": "kiln.activation/v1", "deployment": "fraud", "variant": "primary",
     "gateway_id": "host-123", "held": 3, "requested_at": 1732700000.5}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.wire import integer, mapping, number, text

SCHEMA = "kiln.activation/v1"


def activation_key(routing_key: str) -> str:
    """The Redis hash (and channel) of activation requests next to the routing table's key."""
    return f"{routing_key}:activate"


@dataclass(frozen=True)
class ActivationRequest:
    """One gateway's request for a replica of one variant."""

    deployment: str
    variant: str
    gateway_id: str
    held: int
    """Requests the gateway holds for the variant when it writes."""
    requested_at: float
    """Unix time of the write."""

    @property
    def field(self) -> str:
        """The request's field in the hash: one per variant, whichever gateway wrote it last."""
        return f"{self.deployment}/{self.variant}"


def encode_activation(request: ActivationRequest) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "deployment": request.deployment,
        "variant": request.variant,
        "gateway_id": request.gateway_id,
        "held": request.held,
        "requested_at": request.requested_at,
    }


def parse_activation(payload: object) -> ActivationRequest:
    """The request in a decoded JSON value; ``ContractError`` names the first field refused."""
    item = mapping(payload, "activation")
    if item.get("schema") != SCHEMA:
        raise ContractError("schema", f"expected {SCHEMA!r}, got {item.get('schema')!r}")
    return ActivationRequest(
        deployment=text(item.get("deployment"), "deployment"),
        variant=text(item.get("variant"), "variant"),
        gateway_id=text(item.get("gateway_id", ""), "gateway_id"),
        held=integer(item.get("held", 0), "held", low=0),
        requested_at=number(item.get("requested_at"), "requested_at", low=0),
    )
