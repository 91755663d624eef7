"""plan_batch as a table: Triton's GetDynamicBatch decisions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from inference_worker.batcher import Plan, plan_batch


def queue(*rows: int, enqueued: float = 0.0, keys: str | None = None) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(rows=r, enqueued=enqueued, key=None if keys is None else keys[i])
        for i, r in enumerate(rows)
    ]


CASES = [
    # name, queue, now, max_rows, preferred, max_delay_s, expected
    ("an empty queue runs nothing", queue(), 0.0, 32, (), 0.0, Plan(0)),
    ("zero delay runs a lone request at once", queue(1), 0.0, 32, (), 0.0, Plan(1)),
    ("zero delay takes everything queued", queue(1, 1, 1), 0.0, 32, (), 0.0, Plan(3)),
    ("zero delay stops at the max batch size", queue(*[1] * 40), 0.0, 32, (), 0.0, Plan(32)),
    ("multi-row requests pack up to the max", queue(16, 10, 8), 0.0, 32, (), 0.0, Plan(2)),
    ("multi-row requests fill the batch exactly", queue(16, 8, 8, 1), 0.0, 32, (), 0.0, Plan(3)),
    ("a lone request larger than the max runs alone", queue(40, 1), 0.0, 32, (), 0.0, Plan(1)),
    ("a delay waits for the oldest request", queue(1, 1), 0.001, 32, (), 0.005, Plan(0, 0.004)),
    ("a delay ends when the oldest has waited it", queue(1, 1), 0.005, 32, (), 0.005, Plan(2)),
    ("a full batch goes before the delay", queue(*[1] * 32), 0.0, 32, (), 0.005, Plan(32)),
    ("a preferred size goes before the delay", queue(*[1] * 8), 0.0, 16, (8, 16), 0.005, Plan(8)),
    ("the largest preferred size reached goes", queue(*[1] * 12), 0.0, 16, (4, 8, 16), 0.005, Plan(8)),
    ("no preferred size reached waits", queue(1, 1, 1), 0.001, 16, (4, 8), 0.005, Plan(0, 0.004)),
    (
        "past the delay, preferred sizes no longer matter",
        queue(*[1] * 12),
        0.01,
        16,
        (4, 8, 16),
        0.005,
        Plan(12),
    ),
    ("the largest preferred size caps the batch", queue(*[1] * 20), 0.0, 8, (4, 8), 0.0, Plan(8)),
    ("a request of other shapes ends the batch", queue(1, 1, 1, keys="aab"), 0.0, 32, (), 0.005, Plan(2)),
    ("same shapes batch together", queue(1, 1, 1, keys="aaa"), 0.0, 32, (), 0.0, Plan(3)),
]


@pytest.mark.parametrize(
    ("queued", "now", "max_rows", "preferred", "delay", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_planner_decides_as_triton_does(
    queued: list[SimpleNamespace],
    now: float,
    max_rows: int,
    preferred: tuple[int, ...],
    delay: float,
    expected: Plan,
) -> None:
    plan = plan_batch(queued, now, max_rows=max_rows, preferred=frozenset(preferred), max_delay_s=delay)
    assert plan.take == expected.take
    assert plan.wait_s == pytest.approx(expected.wait_s)
