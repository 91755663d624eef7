"""Typed inputs of the deployment services, built by input serializers and web forms.

Each value object checks its own shape when it is made (types, ranges, defaults: one place);
the services keep the domain rules (the variants exist, the weights add up to 100, a variant
needs a ready replica to take traffic). Errors are ``InvalidDeploymentError`` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings

from deployments.autoscaling.table import (
    AUTOSCALING,
    DOWNSCALE_DELAY_S,
    IDLE_BEFORE_ZERO_S,
    MAX_REPLICAS,
    MIN_REPLICAS,
    TARGET_IN_FLIGHT,
    UPSCALE_DELAY_S,
)
from deployments.errors import InvalidDeploymentError
from deployments.models import AliasMovePolicy
from inference_worker.contracts.errors import ContractError
from registry.models import slug_refusal

ALIAS_MOVE_POLICIES: tuple[str, ...] = tuple(AliasMovePolicy.values)


def alias_move_policy(value: Any) -> str:
    """``on_alias_move``: what a deployment does when the alias of a variant carrying traffic moves."""
    if value not in ALIAS_MOVE_POLICIES:
        raise InvalidDeploymentError(f"on_alias_move: one of {', '.join(ALIAS_MOVE_POLICIES)}")
    return str(value)


def _percent(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise InvalidDeploymentError(f"{name}: must be an integer from 0 to 100")
    return value


@dataclass(frozen=True)
class Share:
    """One variant's part of a split: a weight of live requests and a percentage of copies.

    A person gives a variant one or the other (``Split.parse`` refuses both); a rollout that
    measures shadow agreement gives its candidate both, so the requests routed elsewhere are
    mirrored to it (a gateway never mirrors a request to the variant that answered it).
    """

    weight: int = 0
    shadow_percent: int = 0

    def __post_init__(self) -> None:
        _percent(self.weight, "weight")
        _percent(self.shadow_percent, "shadow_percent")

    def as_dict(self) -> dict[str, int]:
        return {"weight": self.weight, "shadow_percent": self.shadow_percent}


@dataclass(frozen=True)
class Split(Mapping[str, Share]):
    """A whole traffic split: every variant of a deployment with its share."""

    shares: Mapping[str, Share]

    @classmethod
    def parse(cls, raw: Any, *, shadows: Mapping[str, int] | None = None) -> Split:
        """``{"a": 90, "b": 10}`` or ``{"a": {"weight": 90, "shadow_percent": 0}}``.

        A bare weight keeps the variant's current shadow percentage (``shadows``).
        """
        if not isinstance(raw, dict) or not raw:
            raise InvalidDeploymentError('split: give every variant, e.g. {"a": 90, "b": 10}')
        shares = {}
        for name, value in raw.items():
            entry = value if isinstance(value, dict) else {"weight": value}
            unknown = sorted(set(entry) - {"weight", "shadow_percent"})
            if unknown:
                raise InvalidDeploymentError(f"split.{name}: unknown field(s) {', '.join(unknown)}")
            weight = entry.get("weight", 0)
            shadow = entry.get("shadow_percent", (shadows or {}).get(name, 0))
            shares[str(name)] = Share(
                weight=_percent(weight, f"split.{name}.weight"),
                shadow_percent=_percent(shadow, f"split.{name}.shadow_percent"),
            )
            if weight and shadow:
                raise InvalidDeploymentError(
                    f"split.{name}: a variant is either live (weight) or a shadow (shadow_percent), not both"
                )
        return cls(shares)

    @property
    def total_weight(self) -> int:
        return sum(share.weight for share in self.shares.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: share.as_dict() for name, share in self.shares.items()}

    def __getitem__(self, name: str) -> Share:
        return self.shares[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shares)

    def __len__(self) -> int:
        return len(self.shares)


@dataclass(frozen=True)
class RolloutPolicy:
    """A guarded rollout: the weight steps of the candidate and the objectives every step must meet.

    The defaults here are the API's, the web form's and an alias move's. ``min_requests`` is the
    number of samples each objective needs at each step before the step is judged;
    ``replica_timeout_s`` how long the rollout waits for a ready candidate replica.
    """

    candidate: str
    baseline: str | None = None
    steps: tuple[int, ...] = (5, 25, 50, 100)
    hold_s: float = 60.0
    max_error_rate: float = 0.01
    max_p99_ms: float = 1000.0
    min_shadow_agreement: float | None = None
    min_requests: int = 100
    replica_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        steps = self.steps
        if not isinstance(steps, tuple | list) or not steps or len(steps) > 20:
            raise InvalidDeploymentError("steps: a list of 1 to 20 increasing percentages ending at 100")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100 for s in steps):
            raise InvalidDeploymentError("steps: every step is an integer percentage from 1 to 100")
        if sorted(set(steps)) != list(steps) or steps[-1] != 100:
            raise InvalidDeploymentError("steps: percentages must increase strictly and end at 100")
        object.__setattr__(self, "steps", tuple(steps))
        _number(self.hold_s, "hold_s", 1.0, 86_400.0, "between 1 second and 1 day")
        _number(self.max_error_rate, "max_error_rate", 0.0, 1.0, "a fraction from 0 to 1")
        _number(self.max_p99_ms, "max_p99_ms", 0.001, 3_600_000.0, "a positive number of milliseconds")
        if self.min_shadow_agreement is not None:
            _number(self.min_shadow_agreement, "min_shadow_agreement", 0.0, 1.0, "a fraction from 0 to 1")
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int):
            raise InvalidDeploymentError("min_requests: must be an integer")
        if not 1 <= self.min_requests <= 1_000_000:
            raise InvalidDeploymentError("min_requests: from 1 to 1000000")
        _number(self.replica_timeout_s, "replica_timeout_s", 1.0, 86_400.0, "between 1 second and 1 day")

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (what serializers and forms offer)."""
        for item in fields(cls):
            if item.name == name:
                return item.default
        raise KeyError(name)


_LABEL = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}"
_CONSTRAINT = re.compile(
    rf"(node\.(id|hostname|role|platform\.os|platform\.arch|labels\.{_LABEL})|engine\.labels\.{_LABEL})"
    r"\s*(==|!=)\s*[A-Za-z0-9_.:/\-]{1,200}"
)
_SPREAD = re.compile(rf"node\.labels\.{_LABEL}")


@dataclass(frozen=True)
class Placement:
    """Where an orchestrator may put a variant's replicas (the swarm backend): Swarm's own syntax.

    ``constraints``: every one must hold on a node, e.g. ``node.labels.kiln.gpu==true``;
    ``spread``: node labels to spread replicas evenly over, in order, e.g. ``node.labels.zone``.
    """

    constraints: tuple[str, ...] = ()
    spread: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, *, prefix: str = "") -> Placement:
        if raw in (None, ""):
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"constraints", "spread"}:
            raise InvalidDeploymentError(f'{prefix}placement: {{"constraints": [...], "spread": [...]}}')
        constraints = _strings(raw.get("constraints"), f"{prefix}placement.constraints", limit=16)
        spread = _strings(raw.get("spread"), f"{prefix}placement.spread", limit=4)
        for text in constraints:
            if not _CONSTRAINT.fullmatch(text):
                raise InvalidDeploymentError(
                    f"{prefix}placement.constraints: {text!r} is not a constraint such as "
                    "node.labels.kiln.gpu==true or node.role!=manager"
                )
        for text in spread:
            if not _SPREAD.fullmatch(text):
                raise InvalidDeploymentError(
                    f"{prefix}placement.spread: {text!r} is not a node label such as node.labels.zone"
                )
        return cls(constraints=tuple(constraints), spread=tuple(spread))

    def __bool__(self) -> bool:
        return bool(self.constraints or self.spread)


def _strings(raw: Any, name: str, *, limit: int) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
        raise InvalidDeploymentError(f"{name}: a list of strings")
    if len(raw) > limit:
        raise InvalidDeploymentError(f"{name}: at most {limit}")
    return [item.strip() for item in raw if item.strip()]


def slug(value: Any, name: str) -> str:
    """A name of lowercase letters, digits and hyphens (deployments, variants, aliases)."""
    if not isinstance(value, str):
        raise InvalidDeploymentError(f"{name}: must be a string")
    refusal = slug_refusal(name, value)
    if refusal is not None:
        raise InvalidDeploymentError(refusal)
    return value


@dataclass(frozen=True)
class VersionTarget:
    """Which version a variant serves: a pinned number, or an alias it follows (exactly one)."""

    version: int | None = None
    alias: str = ""

    def __post_init__(self) -> None:
        if (self.version is None) == (not self.alias):
            raise InvalidDeploymentError("version: give either a version number or an alias to follow")
        if self.version is not None and (isinstance(self.version, bool) or not isinstance(self.version, int)):
            raise InvalidDeploymentError("version: must be a version number")
        if self.alias:
            slug(self.alias, "alias")

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> VersionTarget:
        version = raw.get("version")
        return cls(version=None if version in (None, "") else version, alias=raw.get("alias") or "")


def gpu_ids(device: Any) -> tuple[int, ...]:
    """``'cpu'``, ``'cuda:0'``, ``'0,1'`` or ``[0, 1]`` as sorted GPU ids (none for the CPU)."""
    if device in (None, "", "cpu"):
        return ()
    if isinstance(device, str) and device.startswith("cuda:"):
        device = device[5:].split(",")
    if isinstance(device, str):
        device = device.split(",")
    try:
        ids = sorted({int(str(d).strip()) for d in device})
    except (TypeError, ValueError):
        raise InvalidDeploymentError(
            "device: use 'cpu', 'cuda:0' or a list of GPU ids such as [0, 1]"
        ) from None
    if any(i < 0 or i > 63 for i in ids):
        raise InvalidDeploymentError("device: GPU ids must be between 0 and 63")
    return tuple(ids)


@dataclass(frozen=True)
class VariantSpec:
    """One variant as asked for; what is left out is chosen when the deployment is made.

    ``name`` None is ``primary`` for the first variant and ``v<i>`` after it; ``weight`` None is
    100 for the first and 0 after; ``backend`` None is ``KILN_DEFAULT_BACKEND``. ``batching``
    holds only the options given: the rest is proposed from the version's latency profile, and
    the merged options are checked against the batching table.
    """

    target: VersionTarget
    name: str | None = None
    replicas: int = 1
    weight: int | None = None
    gpu_ids: tuple[int, ...] = ()
    backend: str | None = None
    batching: Mapping[str, Any] = field(default_factory=dict)
    placement: Placement = field(default_factory=lambda: Placement())

    def __post_init__(self) -> None:
        if self.name is not None:
            slug(self.name, "name")
        replicas, most = self.replicas, settings.KILN_MAX_REPLICAS
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= most:
            raise InvalidDeploymentError(f"replicas: must be an integer from 0 to {most}")
        if self.weight is not None:
            _percent(self.weight, "weight")
        if self.backend is not None and not isinstance(self.backend, str):
            raise InvalidDeploymentError("backend: must be a string")
        if not isinstance(self.batching, Mapping):
            raise InvalidDeploymentError("batching: must be an object")

    @classmethod
    def parse(cls, raw: Any, *, prefix: str = "") -> VariantSpec:
        """From the API's and the forms' field names (``device`` for the GPU ids); errors carry ``prefix``."""
        if not isinstance(raw, Mapping):
            raise InvalidDeploymentError(f"{prefix.rstrip('.')}: must be an object")
        try:
            return cls(
                target=VersionTarget.parse(raw),
                name=raw.get("name"),
                replicas=raw.get("replicas", 1),
                weight=raw.get("weight"),
                gpu_ids=gpu_ids(raw.get("device", "cpu")),
                backend=raw.get("backend") or None,
                batching=dict(raw.get("batching") or {}),
                placement=Placement.parse(raw.get("placement")),
            )
        except InvalidDeploymentError as exc:
            raise InvalidDeploymentError(f"{prefix}{exc.message}", extra=exc.extra) from None


@dataclass(frozen=True)
class AutoscalingPolicy:
    """A variant's autoscaling policy: bounds and defaults from ``autoscaling.table``, checked here.

    ``max_replicas`` is also capped by ``KILN_MAX_REPLICAS``, and the minimum may not pass it.
    """

    min_replicas: int = MIN_REPLICAS.default
    max_replicas: int = MAX_REPLICAS.default
    target_in_flight: float = TARGET_IN_FLIGHT.default
    upscale_delay_s: float = UPSCALE_DELAY_S.default
    downscale_delay_s: float = DOWNSCALE_DELAY_S.default
    idle_before_zero_s: float = IDLE_BEFORE_ZERO_S.default

    def __post_init__(self) -> None:
        for option in AUTOSCALING.values():
            try:
                object.__setattr__(self, option.name, option.check(getattr(self, option.name)))
            except ContractError as exc:
                raise InvalidDeploymentError(f"{option.name}: {exc.reason}") from None
        most = settings.KILN_MAX_REPLICAS
        if self.max_replicas > most:
            raise InvalidDeploymentError(f"max_replicas: at most {most} on this platform (KILN_MAX_REPLICAS)")
        if self.min_replicas > self.max_replicas:
            raise InvalidDeploymentError(
                f"min_replicas: {self.min_replicas} is above max_replicas ({self.max_replicas})"
            )

    @classmethod
    def parse(cls, raw: Any, *, base: AutoscalingPolicy | None = None, prefix: str = "") -> AutoscalingPolicy:
        """From a JSON object; absent options keep ``base``'s values (the defaults without one)."""
        if not isinstance(raw, Mapping):
            raise InvalidDeploymentError(f"{prefix}autoscaling: must be an object")
        unknown = sorted(str(name) for name in raw if name not in AUTOSCALING)
        if unknown:
            raise InvalidDeploymentError(f"{prefix}{unknown[0]}: not an autoscaling option")
        try:
            return cls(**{**(base or cls()).values(), **raw})
        except InvalidDeploymentError as exc:
            raise InvalidDeploymentError(f"{prefix}{exc.message}") from None

    def values(self) -> dict[str, Any]:
        """Each option by name, in the table's order."""
        return {name: getattr(self, name) for name in AUTOSCALING}


def _number(value: Any, name: str, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidDeploymentError(f"{name}: must be a number")
    if not low <= value <= high:
        raise InvalidDeploymentError(f"{name}: {what}")


__all__ = (
    "ALIAS_MOVE_POLICIES",
    "AutoscalingPolicy",
    "Placement",
    "RolloutPolicy",
    "Share",
    "Split",
    "VariantSpec",
    "VersionTarget",
    "alias_move_policy",
    "gpu_ids",
    "slug",
)
