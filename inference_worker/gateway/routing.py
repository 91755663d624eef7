"""The gateway's routing table and the two pure choices made for every request.

The platform publishes the table (its format and checks: ``contracts.routing``);
``build_table`` turns the parsed record into frozen objects with everything the
hot path needs precomputed (cumulative weights, response label headers, the
upstream path prefix). A new table replaces the old one whole: a request holds
the ``Route`` it was routed with, so it is served by a variant of the old or
the new split, never a mix.

``choose_arm`` and ``choose_replica`` are pure, as Ray Serve's
``choose_replicas``: state comes in as arguments (the random source, the
outstanding-request counts), so they are tested as plain functions.

Sticky keys use weighted rendezvous hashing: each arm scores ``-w / ln(u)``
with ``u`` a stable hash of (key, arm name) in (0, 1); the highest score wins.
A key's winner is the arm that would win a weighted lottery drawn with the
key's own numbers, so each arm gets its share of keys, and a weight change
moves only keys to the arm whose weight grew (from those that shrank): the
minimum that must move, unlike ``hash % n``.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random
from urllib.parse import unquote_to_bytes

from inference_worker.contracts.routing import DeploymentRecord, TableRecord, VariantRecord, table_digest

_TWO_64 = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Replica:
    """One ready worker of a variant."""

    id: str
    url: str
    """``http://host:port``: the pool key."""
    host: str
    port: int
    version: str
    labels: bytes
    """The ``X-Kiln-Variant`` and ``X-Kiln-Model-Version`` header lines of its answers."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of a deployment: live (weight > 0) or a shadow (shadow_percent > 0)."""

    name: str
    model_name: str
    version: str
    weight: float
    shadow_percent: float
    replicas: tuple[Replica, ...]
    seed: bytes = b""
    """The arm's part of the rendezvous hash input."""
    labels: bytes = b""
    """Header lines for answers the gateway makes itself (no replica)."""
    model: bytes = b""
    """``model_name`` as it goes into an upstream URL."""
    activate: bool = False
    """Without a replica, its requests are held while the platform starts one (``Activator``)."""


@dataclass(frozen=True, slots=True)
class Route:
    """A deployment: its live arms with cumulative weights, and its shadows."""

    name: str
    model: str
    variants: tuple[Variant, ...]
    arms: tuple[Variant, ...]
    cumulative: tuple[float, ...]
    shadows: tuple[Variant, ...]


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every deployment by name; never changed once built."""

    version: int
    deployments: Mapping[str, Route] = field(default_factory=dict)
    digest: str = ""
    """``contracts.routing.table_digest`` of the record it was built from ("" for none)."""


EMPTY = RoutingTable(version=0)


def choose_arm(route: Route, key: bytes | None, rng: Random) -> Variant | None:
    """The live arm a request goes to: by weight, or sticky per ``key``; None without live arms."""
    arms = route.arms
    if len(arms) <= 1:
        return arms[0] if arms else None
    if key is None:
        cumulative = route.cumulative
        index = bisect_right(cumulative, rng.random() * cumulative[-1])
        return arms[min(index, len(arms) - 1)]
    best, best_score = arms[0], -math.inf
    for arm in arms:
        digest = hashlib.blake2b(arm.seed + key, digest_size=8).digest()
        u = (int.from_bytes(digest, "little") + 0.5) / _TWO_64  # in (0, 1), never 0 or 1
        score = -arm.weight / math.log(u)
        if score > best_score:
            best, best_score = arm, score
    return best


def choose_replica(
    replicas: Sequence[Replica],
    load: Callable[[str], float],
    rng: Random,
    exclude: Container[str] = (),
) -> Replica | None:
    """The replica with the fewest outstanding requests (``load(url)``), ties broken at random.

    Replicas whose url is in ``exclude`` (already tried for this request) are
    skipped; None when none is left.
    """
    if len(replicas) == 1:
        only = replicas[0]
        return None if only.url in exclude else only
    best: Replica | None = None
    best_load = math.inf
    ties = 0
    for replica in replicas:
        if replica.url in exclude:
            continue
        current = load(replica.url)
        if current < best_load:
            best, best_load, ties = replica, current, 1
        elif current == best_load:
            ties += 1  # reservoir sampling: each tied replica wins with probability 1/ties
            if rng.random() * ties < 1.0:
                best = replica
    return best


INFER, READ, INVALID = range(3)


@dataclass(frozen=True, slots=True)
class Target:
    """A model URL taken apart: what it asks, the deployment, and the pieces to rewrite it."""

    kind: int
    """``INFER`` (POST only), ``READ`` (metadata or readiness: GET) or ``INVALID`` (404)."""
    key: bytes
    """The deployment name, unquoted."""
    prefix: bytes
    name: bytes
    """The deployment name as the URL spells it."""
    rest: bytes
    """Everything after the name (action, query)."""


def parse_target(url: bytes) -> Target | None:
    """What a ``/v2/models/...`` or ``/v1/models/...`` URL names; None for any other URL."""
    if not url.startswith((b"/v2/models/", b"/v1/models/")):
        return None
    prefix, rest = url[:11], url[11:]
    if prefix == b"/v1/models/":
        path = rest.partition(b"?")[0]
        name = path[:-8] if path.endswith(b":predict") else path
        kind = INFER if len(name) != len(path) else READ
    else:
        name = rest.partition(b"/")[0].partition(b"?")[0]
        action = rest[len(name) :].partition(b"?")[0]
        if action == b"/infer" or (action.startswith(b"/versions/") and action.endswith(b"/infer")):
            kind = INFER
        else:
            kind = READ if action in (b"", b"/ready") or _version_route(action) else INVALID
    key = unquote_to_bytes(name) if b"%" in name else name
    return Target(kind, key, prefix, name, rest[len(name) :])


def _version_route(action: bytes) -> bool:
    """``/versions/{v}`` or ``/versions/{v}/ready``."""
    parts = action.split(b"/")
    return (
        len(parts) in (3, 4) and parts[1] == b"versions" and parts[2] != b"" and parts[3:] in ([], [b"ready"])
    )


def wants_shadow(variant: Variant, rng: Random) -> bool:
    """Whether this request is copied to the shadow ``variant``."""
    return variant.shadow_percent >= 100 or rng.random() * 100.0 < variant.shadow_percent


# -- building ---------------------------------------------------------------------------------
def build_table(record: TableRecord) -> RoutingTable:
    """The hot-path objects of a parsed table (``contracts.routing.parse_table`` checked it)."""
    routes = {name: _route(name, deployment) for name, deployment in record.deployments.items()}
    return RoutingTable(version=record.version, deployments=routes, digest=table_digest(record))


def _route(name: str, record: DeploymentRecord) -> Route:
    variants = tuple(_variant(item) for item in record.variants)
    arms = tuple(v for v in variants if v.weight > 0)
    cumulative: list[float] = []
    for arm in arms:
        cumulative.append((cumulative[-1] if cumulative else 0.0) + arm.weight)
    # A live arm with a shadow percentage (a rollout measuring agreement) also gets copies of the
    # requests the other arms answered; ``GatewayApp.mirror`` never copies a request to its own arm.
    shadows = tuple(v for v in variants if v.shadow_percent > 0)
    return Route(name, record.model, variants, arms, tuple(cumulative), shadows)


def _labels(variant: str, version: str) -> bytes:
    return b"X-Kiln-Variant: %s\r\nX-Kiln-Model-Version: %s\r\n" % (variant.encode(), version.encode())


def _variant(record: VariantRecord) -> Variant:
    name, version = record.name, record.version
    replicas = tuple(
        Replica(str(r.id), f"http://{r.host}:{r.port}", r.host, r.port, r.version, _labels(name, r.version))
        for r in record.replicas
    )
    return Variant(
        name,
        record.model_name,
        version,
        record.weight,
        record.shadow_percent,
        replicas,
        seed=name.encode() + b"\x00",
        labels=_labels(name, version),
        model=record.model_name.encode(),
        activate=record.activate,
    )
