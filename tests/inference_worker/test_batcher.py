"""The batcher with a fake event loop, a fake model and an injected clock: no threads, no sleeps."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from inference_worker.batcher import Batch, Batcher, Finish, Outputs, Pending
from inference_worker.config import DynamicBatching
from inference_worker.errors import ModelFailure, QueueFull, RequestTimeout, WorkerError
from inference_worker.h2_send import ReadScope


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_soon / call_later / call_soon_threadsafe on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ready: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self.timers: list[FakeTimer] = []

    def clock(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        self.ready.append((callback, args))

    call_soon_threadsafe = call_soon

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(self.now + delay, lambda: callback(*args))
        self.timers.append(timer)
        return timer

    def run(self) -> None:
        while self.ready:
            callback, args = self.ready.popleft()
            callback(*args)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(self.timers, key=lambda t: t.when):
            if not timer.cancelled and timer.when <= self.now + 1e-12:
                self.timers.remove(timer)
                timer.callback()
        self.run()


class FakeModel:
    """A runner that holds batches until the test completes them; y = 2 * x."""

    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.running: list[tuple[Batch, Finish]] = []
        self.sizes: list[int] = []

    def start(self, batch: Batch, finish: Finish) -> None:
        self.running.append((batch, finish))
        self.sizes.append(batch.rows)

    def complete(self, result: Outputs | BaseException | None = None) -> None:
        batch, finish = self.running.pop(0)
        if result is None:
            result = [np.asarray(batch.feeds()["x"]) * 2]
        self.loop.call_soon(finish, batch, result)
        self.loop.run()

    def close(self) -> None:
        pass


class Results:
    def __init__(self) -> None:
        self.by_name: dict[str, Outputs | WorkerError] = {}

    def done(self, name: str) -> Callable[[Outputs | WorkerError], None]:
        return lambda result: self.by_name.__setitem__(name, result)


def make(
    config: DynamicBatching | None = None,
    *,
    runners: int = 1,
    batched: bool = True,
    max_queue_bytes: int = 1 << 30,
    scope: ReadScope | None = None,
) -> tuple[Batcher, FakeLoop, list[FakeModel], Results]:
    loop = FakeLoop()
    models = [FakeModel(loop) for _ in range(runners)]
    batcher = Batcher(
        models,
        config or DynamicBatching(),
        batched=batched,
        loop=loop,
        max_queue_bytes=max_queue_bytes,
        clock=loop.clock,
        scope=scope,
    )
    return batcher, loop, models, Results()


def request(
    results: Results, name: str, rows: int = 1, *, timeout: float = 10.0, key: object = None
) -> Pending:
    x = np.full((rows, 2), float(len(results.by_name) + 1), dtype=np.float32)
    return Pending({"x": x}, rows=rows, key=key, deadline=timeout, done=results.done(name))


def test_a_lone_request_runs_at_once_with_zero_delay() -> None:
    batcher, loop, (model,), results = make()
    batcher.submit(request(results, "a"))
    loop.run()
    assert model.sizes == [1]
    model.complete()
    assert isinstance(results.by_name["a"], list)


def test_requests_arriving_together_run_as_one_batch() -> None:
    batcher, loop, (model,), results = make()
    for name in "abc":
        batcher.submit(request(results, name))
    loop.run()
    assert model.sizes == [3]


def test_requests_queued_while_the_model_runs_form_the_next_batch() -> None:
    batcher, loop, (model,), results = make()
    batcher.submit(request(results, "first"))
    loop.run()
    for name in "abcd":
        batcher.submit(request(results, name))
    loop.run()
    assert model.sizes == [1]
    assert batcher.queue_depth == 4
    model.complete()
    assert model.sizes == [1, 4]
    assert batcher.queue_depth == 0


def test_multi_row_requests_are_packed_and_split_back_by_row() -> None:
    batcher, loop, (model,), results = make()
    sent = [request(results, "two", 2), request(results, "three", 3), request(results, "one", 1)]
    for entry in sent:
        batcher.submit(entry)
    loop.run()
    assert model.sizes == [6]
    model.complete()
    for entry, name in zip(sent, ["two", "three", "one"], strict=True):
        (output,) = results.by_name[name]  # type: ignore[misc]
        np.testing.assert_array_equal(output, entry.inputs["x"] * 2)


def test_a_batch_waits_for_the_queue_delay_then_runs() -> None:
    batcher, loop, (model,), results = make(DynamicBatching(max_queue_delay_microseconds=5000))
    batcher.submit(request(results, "a"))
    loop.run()
    loop.advance(0.004)
    batcher.submit(request(results, "b"))
    loop.run()
    assert model.sizes == []
    loop.advance(0.001)
    assert model.sizes == [2]


def test_a_preferred_batch_size_runs_without_waiting_for_the_delay() -> None:
    config = DynamicBatching(max_queue_delay_microseconds=100_000, preferred_batch_sizes=(2, 4))
    batcher, loop, (model,), results = make(config)
    batcher.submit(request(results, "a"))
    loop.run()
    assert model.sizes == []
    batcher.submit(request(results, "b"))
    loop.run()
    assert model.sizes == [2]


def test_a_full_batch_runs_without_waiting_for_the_delay() -> None:
    batcher, loop, (model,), results = make(
        DynamicBatching(max_batch_size=4, max_queue_delay_microseconds=100_000)
    )
    for name in "abcde":
        batcher.submit(request(results, name))
    loop.run()
    assert model.sizes == [4]


def test_a_full_queue_refuses_at_once() -> None:
    batcher, loop, (_model,), results = make(DynamicBatching(max_queue_size=2))
    batcher.submit(request(results, "running"))
    loop.run()
    batcher.submit(request(results, "a"))
    batcher.submit(request(results, "b"))
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit(request(results, "c"))
    assert batcher.queue_depth == 2


def test_the_bytes_waiting_in_the_queue_are_bounded() -> None:
    batcher, loop, (_model,), results = make(max_queue_bytes=20)
    batcher.submit(request(results, "running"))
    loop.run()
    batcher.submit(request(results, "a", rows=2))  # 16 bytes
    with pytest.raises(QueueFull):
        batcher.submit(request(results, "b"))  # 8 more


def test_a_request_past_its_deadline_times_out_and_never_runs() -> None:
    batcher, loop, (model,), results = make()
    batcher.submit(request(results, "running"))
    loop.run()
    batcher.submit(request(results, "late", timeout=0.05))
    batcher.submit(request(results, "patient", timeout=5.0))
    loop.advance(0.05)
    assert isinstance(results.by_name["late"], RequestTimeout)
    assert "patient" not in results.by_name
    model.complete()
    assert model.sizes == [1, 1]
    model.complete()
    assert isinstance(results.by_name["patient"], list)


def test_an_earlier_deadline_behind_later_ones_still_expires_on_time() -> None:
    batcher, loop, (_model,), results = make()
    batcher.submit(request(results, "running"))
    loop.run()
    batcher.submit(request(results, "slow", timeout=5.0))
    batcher.submit(request(results, "hasty", timeout=0.01))
    loop.advance(0.01)
    assert isinstance(results.by_name["hasty"], RequestTimeout)
    assert "slow" not in results.by_name


def test_a_cancelled_request_never_runs() -> None:
    batcher, loop, (model,), results = make()
    batcher.submit(request(results, "running"))
    loop.run()
    gone = request(results, "gone")
    batcher.submit(gone)
    batcher.submit(request(results, "kept"))
    assert batcher.cancel(gone)
    model.complete()
    assert model.sizes == [1, 1]


def test_a_model_failure_fails_every_request_of_its_batch() -> None:
    batcher, loop, (model,), results = make()
    for name in "ab":
        batcher.submit(request(results, name))
    loop.run()
    model.complete(RuntimeError("kaboom"))
    for name in "ab":
        error = results.by_name[name]
        assert isinstance(error, ModelFailure)
        assert "kaboom" in error.message


def test_a_batch_s_answers_are_delivered_inside_the_scope_which_ends_even_when_one_fails() -> None:
    scope = ReadScope()
    batcher, loop, (model,), results = make(scope=scope)
    inside: dict[str, bool] = {}

    def done(name: str, fail: bool) -> Callable[[Outputs | WorkerError], None]:
        def deliver(result: Outputs | WorkerError) -> None:
            inside[name] = scope.reading  # the connections it writes to flush when delivery ends
            if fail:
                raise RuntimeError("the client's connection broke")

        return deliver

    for name, fail in (("a", True), ("b", False)):
        x = np.ones((1, 2), np.float32)
        batcher.submit(Pending({"x": x}, rows=1, key=None, deadline=10.0, done=done(name, fail)))
    loop.run()
    model.complete()
    assert inside == {"a": True, "b": True}
    assert not scope.reading
    batcher.submit(request(results, "c"))
    loop.run()
    model.complete(RuntimeError("kaboom"))  # a failed batch too
    assert isinstance(results.by_name["c"], ModelFailure)
    assert not scope.reading


def test_outputs_with_the_wrong_number_of_rows_fail_the_batch() -> None:
    batcher, loop, (model,), results = make()
    for name in "ab":
        batcher.submit(request(results, name))
    loop.run()
    model.complete([np.zeros((3, 2), dtype=np.float32)])
    error = results.by_name["a"]
    assert isinstance(error, ModelFailure)
    assert "3 rows for a batch of 2" in error.message


def test_a_model_without_a_batch_dimension_runs_one_request_at_a_time() -> None:
    batcher, loop, (model,), results = make(batched=False)
    for name in "abc":
        batcher.submit(request(results, name))
    loop.run()
    assert model.sizes == [1]
    model.complete()
    model.complete()
    assert model.sizes == [1, 1, 1]


def test_two_instances_run_two_batches_at_once() -> None:
    batcher, loop, models, results = make(DynamicBatching(max_batch_size=2), runners=2)
    for name in "abcd":
        batcher.submit(request(results, name))
    loop.run()
    assert [m.sizes for m in models] == [[2], [2]]


def test_requests_of_other_shapes_wait_for_their_own_batch() -> None:
    batcher, loop, (model,), results = make()
    batcher.submit(request(results, "a", key=(3,)))
    batcher.submit(request(results, "b", key=(3,)))
    batcher.submit(request(results, "c", key=(5,)))
    loop.run()
    assert model.sizes == [2]
    model.complete()
    assert model.sizes == [2, 1]
