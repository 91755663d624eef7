"""The gateway's routing table and the two pure choices made for every request.

The platform publishes the table as JSON (``deployments/services/routing.py``)::

    {"version": 1732700000123, "deployments": {"fraud": {"model": "fraud-model", "variants": [
        {"name": "a", "model_name": "fraud", "version": 3, "weight": 90, "shadow_percent": 0,
         "replicas": [{"id": 12, "url": "http://127.0.0.1:40123", "version": 3}]}]}}}

``parse_table`` turns it into frozen objects, checked once, with everything the
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
import re
from bisect import bisect_right
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TWO_64 = float(1 << 64)


class TableError(ValueError):
    """A published table the gateway refuses (it keeps serving the previous one)."""


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


# -- parsing ----------------------------------------------------------------------------------
def parse_table(payload: Any) -> RoutingTable:
    """The frozen table from the decoded JSON; ``TableError`` names what is wrong."""
    if not isinstance(payload, dict) or not isinstance(payload.get("deployments"), dict):
        raise TableError("the routing table must be an object with a 'deployments' object")
    version = payload.get("version", 0)
    if type(version) is not int:
        raise TableError("'version' must be an integer")
    routes = {}
    for name, entry in payload["deployments"].items():
        routes[_name(name, "deployment")] = _route(name, entry)
    return RoutingTable(version=version, deployments=routes)


def _route(name: str, entry: object) -> Route:
    if not isinstance(entry, dict) or not isinstance(entry.get("variants"), list):
        raise TableError(f"deployment {name!r}: expected an object with a 'variants' list")
    variants = tuple(_variant(name, item) for item in entry["variants"])
    if len({v.name for v in variants}) != len(variants):
        raise TableError(f"deployment {name!r}: variant names repeat")
    arms = tuple(v for v in variants if v.weight > 0)
    cumulative: list[float] = []
    for arm in arms:
        cumulative.append((cumulative[-1] if cumulative else 0.0) + arm.weight)
    shadows = tuple(v for v in variants if v.weight == 0 and v.shadow_percent > 0)
    model = entry.get("model", name)
    return Route(name, str(model), variants, arms, tuple(cumulative), shadows)


def _variant(deployment: str, item: object) -> Variant:
    if not isinstance(item, dict):
        raise TableError(f"deployment {deployment!r}: each variant must be an object")
    name = _name(item.get("name"), f"deployment {deployment!r}: variant")
    where = f"deployment {deployment!r} variant {name!r}"
    model_name = _name(item.get("model_name", deployment), f"{where}: model_name")
    version = _version(item.get("version", ""), where)
    weight = _number(item.get("weight", 0), f"{where}: weight")
    shadow = _number(item.get("shadow_percent", 0), f"{where}: shadow_percent")
    if shadow > 100:
        raise TableError(f"{where}: shadow_percent must be at most 100")
    replicas_in = item.get("replicas", [])
    if not isinstance(replicas_in, list):
        raise TableError(f"{where}: 'replicas' must be a list")
    labels = b"X-Kiln-Variant: %s\r\nX-Kiln-Model-Version: %s\r\n" % (name.encode(), version.encode())
    replicas = tuple(_replica(name, version, r, where) for r in replicas_in)
    seed = name.encode() + b"\x00"
    return Variant(name, model_name, version, weight, shadow, replicas, seed, labels, model_name.encode())


def _replica(variant: str, version: str, item: object, where: str) -> Replica:
    if not isinstance(item, dict) or not isinstance(item.get("url"), str):
        raise TableError(f"{where}: each replica must be an object with a 'url'")
    parts = urlsplit(item["url"])
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise TableError(f"{where}: replica url {item['url']!r} is not http://host:port")
    served = _version(item.get("version", version), where)
    labels = b"X-Kiln-Variant: %s\r\nX-Kiln-Model-Version: %s\r\n" % (variant.encode(), served.encode())
    url = f"http://{parts.hostname}:{port}"
    return Replica(str(item.get("id", "")), url, parts.hostname, port, served, labels)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TableError(f"{what} name {value!r} must be 1-128 letters, digits, '_', '.', '-'")
    return value


def _version(value: object, where: str) -> str:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if text and not _VERSION.fullmatch(text):
        raise TableError(f"{where}: version {value!r} must be 1-64 letters, digits, '_', '.', '-'")
    return text


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise TableError(f"{what} must be a non-negative number")
    return float(value)
