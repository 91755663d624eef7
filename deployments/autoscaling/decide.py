"""The autoscaling decision: a pure function of the observed load window and the policy.

The load is the mean number of requests in flight at a variant (sent to its replicas and not
answered, or held by an activator). Over a window it is the larger of two readings: the growth
of the gateways' busy seconds divided by the window (Little's law: exact for answered requests,
however short) and the mean of the in-flight gauges sampled in it (what is still open). A
replica should carry ``target_in_flight`` requests, so the load asks for
``ceil(load / target)`` replicas.

- Up: the mean over the short window (``upscale_delay_s``) asks for more replicas than run,
  by more than ``UP_TOLERANCE`` (a load at the target that reads a little above it is noise):
  scale up at once, to at most ``max_replicas`` (Knative's panic window).
- Down: the mean over the long window (``downscale_delay_s``) fits fewer replicas with
  ``DOWN_HEADROOM`` to spare, the window was observed whole, and the last change is at least
  that old: scale down. The headroom stops flapping: fewer replicas queue more, which reads as
  more load, which would ask for them back.
- Zero: with ``min_replicas`` 0, no request for ``idle_before_zero_s``: stop the last replica.
- From zero: a gateway holds a request (an activation request, or held requests in the load):
  start one replica (or the minimum). While none is ready it starts no more: the held callers
  wait for one worker's start, not for several sharing the machine's cores; once one serves,
  the load asks for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from deployments.inputs import AutoscalingPolicy

UP_TOLERANCE = 0.1
"""Scale up only for a load above the running replicas' target by more than this fraction."""
DOWN_HEADROOM = 0.8
"""Scale down only to replicas that carry the long window's load at this fraction of the target."""


class Reason(StrEnum):
    STEADY = "steady"
    LOAD_UP = "load_up"
    LOAD_DOWN = "load_down"
    IDLE = "idle"
    ACTIVATE = "activate"
    MINIMUM = "minimum"
    MAXIMUM = "maximum"


@dataclass(frozen=True)
class Sample:
    """The variant's load as one autoscaler tick saw it (every gateway added up)."""

    at: float
    """Unix time."""
    busy_s: float
    """Seconds answered requests spent in the gateways, cumulative."""
    requests: int
    """Answered requests, cumulative."""
    in_flight: float
    """Requests at its replicas or held for one, now."""
    counted_at: float | None = None
    """When the gateways wrote the counters (their snapshots' mean time; None: ``at``). A snapshot
    is up to a second older than the tick that reads it: rates use this clock, not the tick's."""

    @property
    def clock(self) -> float:
        return self.at if self.counted_at is None else self.counted_at


@dataclass(frozen=True)
class Decision:
    """How many replicas the variant should run, and what the decision saw."""

    replicas: int
    reason: Reason
    short_load: float
    """Mean requests in flight over the short (upscale) window."""
    long_load: float
    """Mean requests in flight over the long (downscale) window."""
    idle_s: float | None
    """Seconds since the variant last had a request (None: never seen one)."""


def mean_load(samples: Sequence[Sample], now: float, span: float) -> float:
    """Mean requests in flight over the last ``span`` seconds of ``samples`` (oldest first)."""
    recent = [s for s in samples if s.at >= now - span]
    if not recent:
        return 0.0
    before = [s for s in samples if s.at < now - span]
    base, last = (before[-1] if before else recent[0]), recent[-1]
    gauge = sum(s.in_flight for s in recent) / len(recent)
    elapsed = last.clock - base.clock
    answered = max(last.busy_s - base.busy_s, 0.0) / elapsed if elapsed > 0 else 0.0
    return max(answered, gauge)


def needed(load: float, target: float) -> int:
    """Replicas that carry ``load`` at ``target`` requests each."""
    return max(math.ceil(load / target - 1e-9), 0)


def decide(
    *,
    policy: AutoscalingPolicy,
    replicas: int,
    samples: Sequence[Sample],
    now: float,
    last_scaled_at: float | None,
    last_active_at: float | None,
    activation: bool = False,
    warming: bool = False,
) -> Decision:
    """The replica count for a variant running ``replicas`` now, with the reason; ``warming``:
    a replica is starting and none serves yet."""
    short = mean_load(samples, now, policy.upscale_delay_s)
    long = mean_load(samples, now, policy.downscale_delay_s)
    idle_s = None if last_active_at is None else max(now - last_active_at, 0.0)
    low, high, target = policy.min_replicas, policy.max_replicas, policy.target_in_flight

    def made(count: int, reason: Reason) -> Decision:
        return Decision(count, reason, round(short, 3), round(long, 3), idle_s)

    if replicas == 0 and (activation or short > 0):
        return made(min(max(low, 1), high), Reason.ACTIVATE)
    up = min(needed(short, target), high)
    if up > replicas and short > replicas * target * (1 + UP_TOLERANCE) and not warming:
        return made(up, Reason.LOAD_UP)
    if replicas < low:
        return made(low, Reason.MINIMUM)
    if replicas > high:
        return made(high, Reason.MAXIMUM)
    idle = idle_s is not None and idle_s >= policy.idle_before_zero_s
    if low == 0 and replicas > 0 and idle and short == 0 and not activation:
        return made(0, Reason.IDLE)
    settled = last_scaled_at is None or now - last_scaled_at >= policy.downscale_delay_s
    observed = bool(samples) and samples[0].at <= now - policy.downscale_delay_s
    down = max(needed(long / DOWN_HEADROOM, target), low, 1)
    if down < replicas and settled and observed:
        return made(down, Reason.LOAD_DOWN)
    return made(replicas, Reason.STEADY)
