"""The routing table: which replicas serve which deployment, and how traffic splits between variants.

The platform builds it from its database and publishes it whole to Redis (a
JSON string at the routing key, a message on the channel of the same name);
every gateway follows it. Format::

    {"schema": "kiln.routing-table/v1", "version": 1732700000123,
     "generated_at": "2026-11-27T09:00:00+00:00",
     "deployments": {
        "fraud": {"model": "fraud-model", "variants": [
            {"name": "primary", "model_name": "fraud", "version": "3", "weight": 90, "shadow_percent": 0,
             "activate": false,
             "replicas": [{"id": 12, "url": "http://127.0.0.1:40123", "grpc": "127.0.0.1:40124",
                           "version": "3"}]}]}}}

``version`` (of the table) grows with every publication. A variant with a
shadow percentage gets copies of the live requests the other variants answered
(weight 0: a pure shadow; a weight too: a rollout that measures agreement). A replica's
``version`` is the model version it serves (during a rolling update a variant's
replicas serve two); ``grpc`` is its gRPC target, for clients and for people. ``activate`` marks a
variant that may be scaled to zero: while it has no replica, a gateway holds its
requests and asks the platform for one (``contracts.activation``) instead of
answering 503.

Compatibility: tables from before the schema name (no ``schema``, versions as
integers) are read the same; the defaults below are what those tables left out.
Gateways of that time ignore the keys they do not know.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.wire import at, integer, mapping, number, plain, sequence, switch, text

SCHEMA = "kiln.routing-table/v1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAME_RULE = "must be 1-128 letters, digits, '_', '.', '-' (starting with a letter or digit)"
R = TypeVar("R")


def _check_name(value: str, where: str) -> None:
    if not _NAME.fullmatch(value):
        raise ContractError(where, f"{value!r} {_NAME_RULE}")


def _check_version(value: str, where: str) -> None:
    if value and not _VERSION.fullmatch(value):
        raise ContractError(where, f"{value!r} must be 1-64 letters, digits, '_', '.', '-'")


@dataclass(frozen=True)
class ReplicaRecord:
    """One ready worker of a variant."""

    url: str
    """``http://host:port`` of its HTTP server."""
    id: int | str = ""
    grpc: str = ""
    """``host:port`` of its gRPC server ("" without one)."""
    version: str = ""
    """The model version it serves."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise ContractError("url", f"{self.url!r} is not http://host:port")
        _check_version(self.version, "version")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0


@dataclass(frozen=True)
class VariantRecord:
    """One arm of a deployment: live (weight > 0), a shadow (shadow_percent > 0), or both during a rollout."""

    name: str
    model_name: str
    """The model name its workers answer to (the deployment's name)."""
    version: str
    weight: float
    shadow_percent: float = 0.0
    replicas: tuple[ReplicaRecord, ...] = ()
    activate: bool = False
    """Without a replica, hold its requests and ask the platform to start one (scale to zero)."""

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        _check_name(self.model_name, "model_name")
        _check_version(self.version, "version")
        object.__setattr__(self, "weight", number(self.weight, "weight", low=0))
        object.__setattr__(self, "shadow_percent", number(self.shadow_percent, "shadow_percent", low=0))
        if self.shadow_percent > 100:
            raise ContractError("shadow_percent", "must be at most 100")


@dataclass(frozen=True)
class DeploymentRecord:
    """A deployment's variants, in the order the platform lists them."""

    model: str
    """The registered model it serves (for people; the gateway routes by deployment name)."""
    variants: tuple[VariantRecord, ...] = ()

    def __post_init__(self) -> None:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ContractError("variants", "variant names repeat")


@dataclass(frozen=True)
class TableRecord:
    """The whole table; a gateway swaps it in whole."""

    version: int
    deployments: Mapping[str, DeploymentRecord] = field(default_factory=dict)
    generated_at: str = ""
    """When the platform built it (ISO 8601), for people reading Redis."""

    def __post_init__(self) -> None:
        for name in self.deployments:
            _check_name(name, at("deployments", name))


def encode_table(table: TableRecord) -> dict[str, Any]:
    """The JSON object the platform publishes."""
    return {
        "schema": SCHEMA,
        "version": table.version,
        "generated_at": table.generated_at,
        "deployments": {
            name: {"model": deployment.model, "variants": [_encode_variant(v) for v in deployment.variants]}
            for name, deployment in table.deployments.items()
        },
    }


def _encode_variant(variant: VariantRecord) -> dict[str, Any]:
    return {
        "name": variant.name,
        "model_name": variant.model_name,
        "version": variant.version,
        "weight": plain(variant.weight),
        "shadow_percent": plain(variant.shadow_percent),
        "activate": variant.activate,
        "replicas": [
            {"id": r.id, "url": r.url, "grpc": r.grpc, "version": r.version} for r in variant.replicas
        ],
    }


def table_digest(table: TableRecord) -> str:
    """What ``table`` routes, as a hex SHA-256: equal for equal deployments, whatever the table's
    ``version`` and build time (so a gateway's table can be compared with the database's)."""
    body = json.dumps(encode_table(table)["deployments"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def parse_table(payload: object) -> TableRecord:
    """The table in a decoded JSON value; ``ContractError`` names the first thing refused."""
    table = mapping(payload, "table")
    if table.get("schema", SCHEMA) != SCHEMA:
        raise ContractError("schema", f"expected {SCHEMA!r}, got {table.get('schema')!r}")
    version = integer(table.get("version", 0), "version")
    generated_at = text(table.get("generated_at", ""), "generated_at")
    deployments = {}
    for name, entry in mapping(table.get("deployments"), "deployments").items():
        where = at("deployments", name)
        _check_name(name, where)
        deployments[name] = _parse_deployment(name, entry, where)
    return TableRecord(version, deployments, generated_at)


def _parse_deployment(name: str, payload: object, where: str) -> DeploymentRecord:
    entry = mapping(payload, where)
    items = sequence(entry.get("variants"), at(where, "variants"))
    variants = tuple(_parse_variant(name, item, at(at(where, "variants"), i)) for i, item in enumerate(items))
    return _made(
        where, DeploymentRecord, model=text(entry.get("model", name), at(where, "model")), variants=variants
    )


def _parse_variant(deployment: str, payload: object, where: str) -> VariantRecord:
    item = mapping(payload, where)
    name = text(item.get("name"), at(where, "name"))
    version = _version_text(item.get("version", ""), at(where, "version"))
    replicas_in = sequence(item.get("replicas", []), at(where, "replicas"))
    replicas = tuple(
        _parse_replica(version, r, at(at(where, "replicas"), i)) for i, r in enumerate(replicas_in)
    )
    return _made(
        where,
        VariantRecord,
        name=name,
        model_name=text(item.get("model_name", deployment), at(where, "model_name")),
        version=version,
        weight=item.get("weight", 0),
        shadow_percent=item.get("shadow_percent", 0),
        replicas=replicas,
        activate=switch(item.get("activate", False), at(where, "activate")),
    )


def _parse_replica(variant_version: str, payload: object, where: str) -> ReplicaRecord:
    item = mapping(payload, where)
    replica_id = item.get("id", "")
    if isinstance(replica_id, bool) or not isinstance(replica_id, int | str):
        raise ContractError(at(where, "id"), "must be an integer or a string")
    return _made(
        where,
        ReplicaRecord,
        url=text(item.get("url"), at(where, "url")),
        id=replica_id,
        grpc=text(item.get("grpc", ""), at(where, "grpc")),
        version=_version_text(item.get("version", variant_version), at(where, "version")),
    )


def _version_text(value: object, where: str) -> str:
    """A version as text: tables of the first format carried integers."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ContractError(where, "must be a string or an integer")
    return str(value)


def _made(where: str, record: type[R], **values: Any) -> R:
    """``record(**values)``, its refusal named inside ``where``."""
    try:
        return record(**values)
    except ContractError as exc:
        raise ContractError(at(where, exc.field), exc.reason) from None
