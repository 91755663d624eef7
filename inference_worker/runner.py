"""A model instance: its batches run on a thread of its own, or on the event loop when they are quick.

Handing a batch to a thread and its answer back costs a queue put, a thread
wake-up, the GIL changing hands twice and a wake-up of the loop: about 60 µs
of CPU per batch, and more under load, where the loop and the runner thread
contend for the GIL (bench/RESULTS.md, "Inline batches"). For a model that
computes a batch in a few microseconds (an MLP, a small tabular model) that
is most of the cost of a request, so a batch runs on the loop's own thread
when batches as large as it have all run in at most ``inline_below_s``: the
loop is then blocked for no longer than that. A batch larger than any that ran
that fast, or any batch after one that ran slower, goes to the thread, which
measures it; a slow batch forgets what was known fast, so a model whose cost
grows (longer sequences, a busier GPU) moves back to its thread at once. A
compute-heavy model (a CNN at milliseconds a sample) never runs on the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from queue import SimpleQueue

import numpy as np

from inference_worker.batcher import Batch, Finish, Isolated, Outputs, Scheduler, run_isolated


class InstanceRunner:
    """One model instance: the event loop never waits for inference longer than ``inline_below_s``."""

    def __init__(
        self,
        run: Callable[[Mapping[str, np.ndarray]], Outputs],
        loop: Scheduler,
        name: str,
        *,
        inline_below_s: float = 0.0,
    ) -> None:
        self._run = run
        self._loop = loop
        self._inline_below_s = inline_below_s
        self._fast_bytes = -1
        """The largest batch (input bytes) measured at most ``inline_below_s`` since the last slow one."""
        self._jobs: SimpleQueue[tuple[Batch, Finish] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def start(self, batch: Batch, finish: Finish) -> None:
        if batch.nbytes <= self._fast_bytes:
            self._loop.call_soon(self._inline, batch, finish)  # after the answers being delivered now
        else:
            self._jobs.put((batch, finish))

    def close(self) -> None:
        self._jobs.put(None)

    def _compute(self, batch: Batch) -> Outputs | Isolated | BaseException:
        started = time.perf_counter()
        result: Outputs | Isolated | BaseException
        try:
            result = self._run(batch.feeds())
        except Exception as exc:  # the model's own failure, reported to its requests
            result = run_isolated(self._run, batch.entries) if len(batch.entries) > 1 else exc
        batch.compute_s = seconds = time.perf_counter() - started
        if seconds > self._inline_below_s:
            self._fast_bytes = -1
        elif batch.nbytes > self._fast_bytes and isinstance(result, list):
            self._fast_bytes = batch.nbytes  # a failure is no measure: it may end before the compute
        return result

    def _inline(self, batch: Batch, finish: Finish) -> None:
        finish(batch, self._compute(batch))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch, finish = job
            result = self._compute(batch)
            try:
                self._loop.call_soon_threadsafe(finish, batch, result)
            except RuntimeError:  # the loop closed under us: the process is exiting
                return
