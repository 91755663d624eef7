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
- Down: the highest short-window mean seen over the long window (``downscale_delay_s``; the
  Horizontal Pod Autoscaler's stabilisation window keeps its highest recommendation the same
  way) fits fewer replicas within the tolerance, the window was observed whole, and the last
  change is at least that old: scale down. Taking the peak, not the mean, stops flapping:
  fewer replicas queue more, which reads as more load, which would ask for them back.
- Zero: with ``min_replicas`` 0, no request for ``idle_before_zero_s``: stop the last replica.
- From zero: a gateway holds a request (an activation request, or held requests in the load):
  start one replica (or the minimum). While none is ready it starts no more: the held callers
  wait for one worker's start, not for several sharing the machine's cores; once one serves,
  the load asks for the rest.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate

from deployments.inputs import AutoscalingPolicy

TOLERANCE = 0.1
"""A load within this fraction above what the replicas carry at their target is no reason to scale."""


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
    """The highest short-window mean over the long (downscale) window: what fewer replicas must carry."""
    idle_s: float | None
    """Seconds since the variant last had a request (None: never seen one)."""


def mean_load(samples: Sequence[Sample], now: float, span: float) -> float:
    """Mean requests in flight over the last ``span`` seconds of ``samples`` (oldest first)."""
    first = bisect_left([s.at for s in samples], now - span)
    return _mean(samples, _gauge_sums(samples), first, len(samples)) if first < len(samples) else 0.0


def peak_load(samples: Sequence[Sample], now: float, span: float, window: float) -> float:
    """The highest ``window``-second mean load at any sample of the last ``span`` seconds."""
    clocks, sums = [s.at for s in samples], _gauge_sums(samples)
    return max(
        (
            _mean(samples, sums, bisect_left(clocks, clocks[i] - window, 0, i + 1), i + 1)
            for i in range(bisect_left(clocks, now - span), len(samples))
        ),
        default=0.0,
    )


def _gauge_sums(samples: Sequence[Sample]) -> list[float]:
    return list(accumulate((s.in_flight for s in samples), initial=0.0))


def _mean(samples: Sequence[Sample], sums: list[float], start: int, end: int) -> float:
    """The load over ``samples[start:end]`` (not empty), from the sample before it on."""
    base, last = samples[max(start - 1, 0)], samples[end - 1]
    gauge = (sums[end] - sums[start]) / (end - start)
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
    long = peak_load(samples, now, policy.downscale_delay_s, policy.upscale_delay_s)
    idle_s = None if last_active_at is None else max(now - last_active_at, 0.0)
    low, high, target = policy.min_replicas, policy.max_replicas, policy.target_in_flight

    def made(count: int, reason: Reason) -> Decision:
        return Decision(count, reason, round(short, 3), round(long, 3), idle_s)

    if replicas == 0 and (activation or short > 0):
        return made(min(max(low, 1), high), Reason.ACTIVATE)
    up = min(needed(short, target), high)
    if up > replicas and short > replicas * target * (1 + TOLERANCE) and not warming:
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
    down = max(needed(long / (1 + TOLERANCE), target), low, 1)
    if down < replicas and settled and observed:
        return made(down, Reason.LOAD_DOWN)
    return made(replicas, Reason.STEADY)
