"""The autoscaling decision as a table: observed window and policy in, replicas and reason out."""

from __future__ import annotations

import pytest

from deployments.autoscaling.decide import Reason, Sample, decide, mean_load, needed
from deployments.inputs import AutoscalingPolicy

NOW = 1_000_000.0
POLICY = AutoscalingPolicy(
    min_replicas=1,
    max_replicas=6,
    target_in_flight=2.0,
    upscale_delay_s=3.0,
    downscale_delay_s=30.0,
    idle_before_zero_s=60.0,
)
TO_ZERO = AutoscalingPolicy(**{**POLICY.values(), "min_replicas": 0})


def steady(in_flight: float, *, seconds: int = 40, start: float = NOW - 40) -> list[Sample]:
    """One sample a second with ``in_flight`` requests open all the time (busy seconds grow with it)."""
    return [
        Sample(at=start + i, busy_s=in_flight * i, requests=int(10 * in_flight * i), in_flight=in_flight)
        for i in range(seconds + 1)
    ]


def burst(before: float, after: float, *, burst_s: int = 3) -> list[Sample]:
    """``before`` requests in flight for a while, then ``after`` for the last ``burst_s`` seconds."""
    calm = steady(before, seconds=40 - burst_s)
    last = calm[-1]
    loud = [
        Sample(
            at=last.at + i,
            busy_s=last.busy_s + after * i,
            requests=last.requests + int(10 * after * i),
            in_flight=after,
        )
        for i in range(1, burst_s + 1)
    ]
    return calm + loud


def spike(level: float, peak: float) -> list[Sample]:
    """``level`` requests in flight for 40 s, but ``peak`` for 4 s from 20 s ago."""
    samples, busy = [], 0.0
    for i in range(41):
        at = NOW - 40 + i
        load = peak if NOW - 20 <= at < NOW - 16 else level
        busy += load if i else 0.0
        samples.append(Sample(at=at, busy_s=busy, requests=int(10 * busy), in_flight=load))
    return samples


def silent(seconds: int = 40) -> list[Sample]:
    return [
        Sample(at=NOW - seconds + i, busy_s=50.0, requests=500, in_flight=0.0) for i in range(seconds + 1)
    ]


CASES = [
    # (what, policy, replicas, samples, last_scaled_ago, last_active_ago, activation, replicas after, reason)
    ("load at the target holds", POLICY, 2, steady(4.0), 100, 0, False, 2, Reason.STEADY),
    ("a burst of 8 in flight asks for 4", POLICY, 1, burst(1.0, 8.0), 100, 0, False, 4, Reason.LOAD_UP),
    ("upscale right after a change", POLICY, 2, burst(4.0, 10.0), 1, 0, False, 5, Reason.LOAD_UP),
    ("no more than the maximum", POLICY, 2, burst(2.0, 40.0), 100, 0, False, 6, Reason.LOAD_UP),
    ("load fell over the long window", POLICY, 5, steady(2.0), 100, 0, False, 1, Reason.LOAD_DOWN),
    ("down to what the window's peak needs", POLICY, 5, spike(2.0, 6.0), 100, 0, False, 3, Reason.LOAD_DOWN),
    ("a peak at what runs keeps it", POLICY, 4, spike(2.0, 8.0), 100, 0, False, 4, Reason.STEADY),
    ("a load just above the target is noise", POLICY, 2, steady(4.3), 100, 0, False, 2, Reason.STEADY),
    ("above the tolerance it scales up", POLICY, 2, steady(4.5), 100, 0, False, 3, Reason.LOAD_UP),
    ("no downscale soon after a change", POLICY, 5, steady(2.0), 10, 0, False, 5, Reason.STEADY),
    ("a short dip is no downscale", POLICY, 4, burst(8.0, 0.5), 100, 0, False, 4, Reason.STEADY),
    ("never below the minimum", POLICY, 3, silent(), 100, 100, False, 1, Reason.LOAD_DOWN),
    ("minimum 1 never goes to zero", POLICY, 1, silent(), 100, 1000, False, 1, Reason.STEADY),
    ("minimum 0 and idle long enough", TO_ZERO, 1, silent(), 100, 61, False, 0, Reason.IDLE),
    ("minimum 0, not idle long enough", TO_ZERO, 1, silent(), 100, 59, False, 1, Reason.STEADY),
    ("held requests at zero start one", TO_ZERO, 0, burst(0.0, 9.0), 100, 0, False, 1, Reason.ACTIVATE),
    ("an activation request at zero", TO_ZERO, 0, silent(), 100, 0, True, 1, Reason.ACTIVATE),
    ("zero and nothing asked stays", TO_ZERO, 0, silent(), 100, 500, False, 0, Reason.STEADY),
    ("below a raised minimum", POLICY, 0, silent(), 100, 500, False, 1, Reason.MINIMUM),
    ("above a lowered maximum", POLICY, 9, steady(2.0), 1, 0, False, 6, Reason.MAXIMUM),
    ("a window not observed whole", POLICY, 5, steady(2.0, seconds=10, start=NOW - 10), None, 0, False, 5,
     Reason.STEADY),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "replicas", "samples", "scaled_ago", "active_ago", "activation", "expected", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_the_decision_follows_the_window_and_the_policy(
    policy: AutoscalingPolicy,
    replicas: int,
    samples: list[Sample],
    scaled_ago: float | None,
    active_ago: float,
    activation: bool,
    expected: int,
    reason: Reason,
) -> None:
    decision = decide(
        policy=policy,
        replicas=replicas,
        samples=samples,
        now=NOW,
        last_scaled_at=None if scaled_ago is None else NOW - scaled_ago,
        last_active_at=NOW - active_ago,
        activation=activation,
    )

    assert (decision.replicas, decision.reason) == (expected, reason)


def test_no_more_replicas_start_while_none_is_ready() -> None:
    """After an activation the first replica starts alone; once one serves, the load asks for the rest."""
    seen = {
        warming: decide(
            policy=TO_ZERO,
            replicas=1,
            samples=burst(0.0, 9.0),
            now=NOW,
            last_scaled_at=NOW - 1,
            last_active_at=NOW,
            warming=warming,
        )
        for warming in (True, False)
    }

    assert (seen[True].replicas, seen[True].reason) == (1, Reason.STEADY)
    assert (seen[False].replicas, seen[False].reason) == (4, Reason.LOAD_UP)  # 6.75 in flight at 2 each


def test_short_requests_count_by_the_time_they_took_not_by_the_gauge() -> None:
    """Requests of 1 ms at 4000 per second: the gauge may read 0 at every sample, the load is 4."""
    samples = [Sample(at=NOW - 10 + i, busy_s=4.0 * i, requests=4000 * i, in_flight=0.0) for i in range(11)]

    assert mean_load(samples, NOW, 5.0) == pytest.approx(4.0)
    assert needed(4.0, 2.0) == 2
    assert needed(4.01, 2.0) == 3
    assert needed(0.0, 2.0) == 0


def test_a_rate_is_taken_over_the_time_the_counters_cover_not_the_ticks_that_read_them() -> None:
    """One request always in flight (busy seconds grow by 1 a second). The tick at NOW - 2 read a
    snapshot a second old, the tick at NOW a fresh one: 3 busy seconds in 3 s, not in the ticks' 2."""
    samples = [
        Sample(at=NOW - 4, busy_s=8.0, requests=8, in_flight=1.0, counted_at=NOW - 4),
        Sample(at=NOW - 2, busy_s=9.0, requests=9, in_flight=1.0, counted_at=NOW - 3),
        Sample(at=NOW, busy_s=12.0, requests=12, in_flight=1.0, counted_at=NOW),
    ]

    assert mean_load(samples, NOW, 1.0) == pytest.approx(1.0)  # the tick clock said 1.5: one more replica
    assert needed(mean_load(samples, NOW, 1.0), 1.0) == 1


def test_the_decision_says_what_it_saw() -> None:
    decision = decide(
        policy=POLICY,
        replicas=1,
        samples=burst(1.0, 8.0),
        now=NOW,
        last_scaled_at=None,
        last_active_at=NOW - 2,
    )

    assert decision.short_load == pytest.approx(6.25)
    assert decision.long_load == pytest.approx(6.25)  # the burst is the long window's peak
    assert decision.idle_s == 2
