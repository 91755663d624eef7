"""``runner.InstanceRunner`` on a real event loop and a real thread: where each batch runs, and why."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np

from inference_worker.batcher import Batch, Finish, Isolated, Outputs, Pending
from inference_worker.runner import InstanceRunner

QUICK_S = 0.05
"""The threshold in these tests: far above a quick run's time, far below a slow one's."""


class Model:
    """y = x + 1; records the thread each batch ran on, and sleeps past the threshold when told."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.slow = False

    def run(self, feeds: Any) -> Outputs:
        self.threads.append(threading.current_thread().name)
        if self.slow:
            time.sleep(QUICK_S * 2)
        return [feeds["x"] + 1]


def batch_of(rows: int, runner: InstanceRunner) -> Batch:
    x = np.zeros((rows, 2), dtype=np.float32)
    entry = Pending({"x": x}, rows=rows, key=None, deadline=10.0, done=lambda r: None)
    return Batch([entry], rows, 0.0, runner)


def settle(future: asyncio.Future[Outputs | Isolated | BaseException]) -> Finish:
    """What the batcher's finish does here: the result to the test."""
    return lambda batch, result: future.set_result(result)


def run_batches(
    model: Model, plan: list[tuple[int, bool]], inline_below_s: float
) -> list[Outputs | Isolated | BaseException]:
    """Run batches of the given rows one after another (slow ones as told); their results."""

    async def main() -> list[Outputs | Isolated | BaseException]:
        loop = asyncio.get_running_loop()
        runner = InstanceRunner(model.run, loop, "model-instance-test", inline_below_s=inline_below_s)
        results: list[Outputs | Isolated | BaseException] = []
        try:
            for rows, slow in plan:
                model.slow = slow
                finished: asyncio.Future[Outputs | Isolated | BaseException] = loop.create_future()
                runner.start(
                    batch_of(rows, runner),
                    settle(finished),
                )
                results.append(await asyncio.wait_for(finished, 10))
        finally:
            runner.close()
        return results

    return asyncio.run(main())


def test_a_quick_model_s_batches_run_on_the_loop_once_a_batch_as_large_was_measured() -> None:
    model = Model()
    results = run_batches(model, [(1, False), (1, False), (4, False), (4, False), (2, False)], QUICK_S)
    loop_thread = threading.current_thread().name  # asyncio.run's loop runs on this thread
    assert model.threads == [
        "model-instance-test",  # nothing measured yet
        loop_thread,
        "model-instance-test",  # larger than any measured
        loop_thread,
        loop_thread,  # smaller than one measured quick
    ]
    for result in results:
        assert isinstance(result, list)
        np.testing.assert_array_equal(result[0], np.ones_like(result[0]))


def test_a_slow_batch_sends_every_batch_back_to_the_thread_until_one_is_measured_quick() -> None:
    model = Model()
    run_batches(model, [(4, False), (1, False), (2, True), (1, False), (1, False), (2, False)], QUICK_S)
    loop_thread = threading.current_thread().name
    assert model.threads == [
        "model-instance-test",
        loop_thread,
        loop_thread,  # measured slow on the loop (the model changed): what was known quick is forgotten
        "model-instance-test",
        loop_thread,
        "model-instance-test",  # larger than the one batch measured quick since
    ]


def test_with_no_threshold_every_batch_runs_on_the_instance_s_thread() -> None:
    model = Model()
    run_batches(model, [(1, False)] * 4, 0.0)
    assert model.threads == ["model-instance-test"] * 4


def test_a_model_that_fails_on_the_loop_reports_its_failure_to_the_batch() -> None:
    def run(feeds: Any) -> Outputs:
        if feeds["x"].shape[0] == 1 and threading.current_thread() is threading.main_thread():
            raise RuntimeError("kaboom")
        return [feeds["x"]]

    async def main() -> list[Outputs | Isolated | BaseException]:
        loop = asyncio.get_running_loop()
        runner = InstanceRunner(run, loop, "model-instance-test", inline_below_s=QUICK_S)
        results = []
        for _ in range(2):
            finished: asyncio.Future[Outputs | Isolated | BaseException] = loop.create_future()
            runner.start(batch_of(1, runner), settle(finished))
            results.append(await asyncio.wait_for(finished, 10))
        runner.close()
        return results

    first, second = asyncio.run(main())
    assert isinstance(first, list)
    assert isinstance(second, RuntimeError)


def test_a_failed_batch_does_not_count_as_quick() -> None:
    threads: list[str] = []

    def run(feeds: Any) -> Outputs:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            raise ValueError("bad input")  # ends before any compute: says nothing of the model's time
        return [feeds["x"]]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        runner = InstanceRunner(run, loop, "model-instance-test", inline_below_s=QUICK_S)
        for _ in range(3):
            finished: asyncio.Future[Outputs | Isolated | BaseException] = loop.create_future()
            runner.start(batch_of(1, runner), settle(finished))
            await asyncio.wait_for(finished, 10)
        runner.close()

    asyncio.run(main())
    loop_thread = threading.current_thread().name
    assert threads == ["model-instance-test", "model-instance-test", loop_thread]


def test_a_failed_batch_runs_again_half_by_half_so_only_the_failing_request_fails() -> None:
    """Six requests, the fifth refused by the model: halving answers the other five, in about twice
    the batch's rows (not one run per request), and the failure is the fifth's alone."""
    runs: list[int] = []

    def run(feeds: Any) -> Outputs:
        runs.append(feeds["x"].shape[0])
        if (feeds["x"] < 0).any():
            raise RuntimeError("a negative row")
        return [feeds["x"] * 2]

    entries = [
        Pending(
            {"x": np.full((1, 2), -1.0 if index == 4 else index, dtype=np.float32)},
            rows=1,
            key=None,
            deadline=10.0,
            done=lambda r: None,
        )
        for index in range(6)
    ]

    async def main() -> Outputs | Isolated | BaseException:
        loop = asyncio.get_running_loop()
        runner = InstanceRunner(run, loop, "model-instance-test")
        finished: asyncio.Future[Outputs | Isolated | BaseException] = loop.create_future()
        runner.start(Batch(entries, 6, 0.0, runner), lambda batch, result: finished.set_result(result))
        try:
            return await asyncio.wait_for(finished, 10)
        finally:
            runner.close()

    result = asyncio.run(main())

    assert isinstance(result, Isolated)
    assert runs == [6, 3, 3, 1, 2, 1, 1]  # the batch; halves; the failing half's halves, down to one
    answered = {id(entry): outputs for part, outputs in result.parts for entry in part}
    for index, entry in enumerate(entries):
        outputs = answered[id(entry)]
        if index == 4:
            assert isinstance(outputs, RuntimeError)
        else:
            assert not isinstance(outputs, BaseException)
    assert [len(part) for part, _ in result.parts] == [3, 1, 1, 1]
