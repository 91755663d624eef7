"""Triton's dynamic batching: a pure planner, driven by a small asyncio loop.

``plan_batch`` is Triton's ``GetDynamicBatch`` as a pure function of the queue
and the clock: "run the first n requests now" or "decide again in s seconds".
A batch goes as soon as it reaches the largest size it may have (the largest
preferred size, else ``max_batch_size``) or a preferred size; otherwise once
the oldest request has waited ``max_queue_delay``. With a zero delay (the
default) it takes whatever is queued, so an idle worker answers at once and a
busy one batches whatever arrived while the model ran.

``Batcher`` owns the bounded FIFO (a full queue refuses at once), asks the
planner whenever something changes, hands batches to runners (one per model
instance, ``runner.InstanceRunner``: inference on a thread of its own while the
next batch forms, or on the loop when the model is quick) and splits outputs
back by row offsets after checking the total, as PyTriton's ``@batch`` does; a
batch that fails runs again in halves (``run_isolated``), so a request the model
refuses fails alone.
Everything but the runner threads happens on the event loop thread; the loop
is injected (tests pass a fake one and a clock).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from inference_worker.config import DynamicBatching
from inference_worker.errors import ModelFailure, QueueFull, RequestTimeout, WorkerError

log = logging.getLogger("inference_worker.batcher")

Outputs = list[np.ndarray]
Done = Callable[["Outputs | WorkerError"], None]


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer: run the first ``take`` requests, or decide again after ``wait_s``."""

    take: int
    wait_s: float | None = None


class Queued(Protocol):
    """What the planner reads of a queued request."""

    @property
    def rows(self) -> int: ...
    @property
    def key(self) -> Hashable: ...
    @property
    def enqueued(self) -> float: ...


def plan_batch(
    queue: Sequence[Queued] | deque[Any],
    now: float,
    *,
    max_rows: int,
    preferred: frozenset[int],
    max_delay_s: float,
) -> Plan:
    """Triton's ``GetDynamicBatch``: how many queued requests to run now, or how long to wait.

    ``max_rows`` is the largest batch allowed (the largest preferred size when
    there are preferred sizes, as in Triton). Requests only batch with
    requests of the same ``key`` (same non-batch dimensions), in FIFO order.
    A lone request larger than ``max_rows`` still runs, on its own.
    """
    if not queue:
        return Plan(0)
    first = queue[0]
    delay_exceeded = now - first.enqueued >= max_delay_s
    rows = taken = best = 0
    full = False
    for item in queue:
        if taken and (item.key != first.key or rows + item.rows > max_rows):
            full = True
            break
        rows += item.rows
        taken += 1
        if rows in preferred:
            best = taken
        if rows >= max_rows:
            full = True
            break
    if best and not delay_exceeded:
        return Plan(best)
    if full or delay_exceeded:
        return Plan(taken)
    return Plan(0, first.enqueued + max_delay_s - now)


class Pending:
    """One request inside the batcher."""

    __slots__ = ("deadline", "done", "enqueued", "inputs", "key", "nbytes", "rows")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        *,
        rows: int,
        key: Hashable,
        deadline: float,
        done: Done,
        enqueued: float = 0.0,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.deadline = deadline
        self.done = done
        self.enqueued = enqueued
        self.nbytes = sum(array.nbytes for array in inputs.values())


class Batch:
    """Requests that run together on one runner."""

    __slots__ = ("compute_s", "entries", "nbytes", "rows", "runner", "started")

    def __init__(self, entries: list[Pending], rows: int, started: float, runner: Runner) -> None:
        self.entries = entries
        self.rows = rows
        self.started = started
        self.runner = runner
        self.nbytes = sum(entry.nbytes for entry in entries)
        """The inputs' bytes, all requests together."""
        self.compute_s = 0.0

    def feeds(self) -> Mapping[str, np.ndarray]:
        """The model's inputs: the requests' tensors stacked along the batch dimension."""
        return stacked(self.entries)


def stacked(entries: Sequence[Pending]) -> Mapping[str, np.ndarray]:
    """The requests' tensors stacked along the batch dimension (one request's as they are)."""
    if len(entries) == 1:
        return entries[0].inputs
    names = entries[0].inputs.keys()
    return {name: np.concatenate([entry.inputs[name] for entry in entries]) for name in names}


@dataclass(frozen=True, slots=True)
class Isolated:
    """A failed batch run again in parts: each part's requests and outputs, or a lone request's failure."""

    parts: list[tuple[list[Pending], Outputs | BaseException]]


def run_isolated(run: Callable[[Mapping[str, np.ndarray]], Outputs], entries: list[Pending]) -> Isolated:
    """Run a failed batch again half by half until each failure is one request's own: a request the
    model refuses (a token past an embedding's table) must not fail its neighbours. For one such
    request that costs about twice the batch's rows, not a run per request."""
    parts: list[tuple[list[Pending], Outputs | BaseException]] = []

    def halve(part: list[Pending]) -> None:
        middle = len(part) // 2
        for half in (part[:middle], part[middle:]):
            try:
                parts.append((half, run(stacked(half))))
            except Exception as exc:  # the model's own failure, for this half
                if len(half) > 1:
                    halve(half)
                else:
                    parts.append((half, exc))

    halve(entries)
    return Isolated(parts)


Finish = Callable[[Batch, "Outputs | Isolated | BaseException"], None]


class Runner(Protocol):
    """Runs one batch at a time and calls ``finish`` on the event loop when done."""

    def start(self, batch: Batch, finish: Finish) -> None: ...
    def close(self) -> None: ...


class Scheduler(Protocol):
    """The part of an asyncio event loop the batcher uses."""

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Any: ...
    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any: ...
    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Any: ...


class Scope(Protocol):
    """What delivering a batch's results makes connections write goes out when delivery ends
    (``h2_send.ReadScope``), not after the next read of every socket."""

    def begin(self) -> bool: ...

    def end(self) -> None: ...


class BatchObserver(Protocol):
    """Receives every finished batch (metrics)."""

    def on_batch(self, batch: Batch) -> None: ...


class Batcher:
    """The bounded queue, the dispatch loop and the splitting of outputs."""

    def __init__(
        self,
        runners: Sequence[Runner],
        config: DynamicBatching,
        *,
        batched: bool,
        loop: Scheduler,
        max_queue_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
        scope: Scope | None = None,
    ) -> None:
        self._runners = list(runners)
        self._scope = scope
        self._idle = list(runners)
        self._batched = batched
        self._max_rows = max(config.preferred_batch_sizes, default=config.max_batch_size) if batched else 1
        self._preferred = frozenset(config.preferred_batch_sizes) if batched else frozenset()
        self._max_delay_s = config.max_queue_delay_microseconds / 1e6
        self._max_queue = config.max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._loop = loop
        self._clock = clock
        self._observer = observer
        self._queue: deque[Pending] = deque()
        self._queued_bytes = 0
        self._running = 0
        self._scheduled = False
        self._timer: Any = None
        self._timer_at = float("inf")
        self._min_deadline = float("inf")

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a runner."""
        return len(self._queue)

    @property
    def busy_runners(self) -> int:
        """Batches running now."""
        return self._running

    def submit(self, entry: Pending) -> None:
        """Queue a request, or raise ``QueueFull`` at once; ``entry.done`` gets the result."""
        if len(self._queue) >= self._max_queue or self._queued_bytes + entry.nbytes > self._max_queue_bytes:
            raise QueueFull
        entry.enqueued = self._clock()
        self._queue.append(entry)
        self._queued_bytes += entry.nbytes
        if entry.deadline < self._min_deadline:
            self._min_deadline = entry.deadline
        if self._idle:
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._dispatch)
        elif entry.deadline < self._timer_at:
            self._arm(entry.deadline)

    def cancel(self, entry: Pending) -> bool:
        """Drop a request that is still queued (its client went away); True if it was."""
        try:
            self._queue.remove(entry)
        except ValueError:
            return False
        self._queued_bytes -= entry.nbytes
        return True

    def close(self) -> None:
        """Stop the runners' threads (after the queue has drained)."""
        for runner in self._runners:
            runner.close()
        if self._timer is not None:
            self._timer.cancel()

    def _dispatch(self) -> None:
        self._scheduled = False
        now = self._clock()
        if self._min_deadline <= now:
            self._expire(now)
        wait_until = float("inf")
        while self._idle and self._queue:
            plan = plan_batch(
                self._queue,
                now,
                max_rows=self._max_rows,
                preferred=self._preferred,
                max_delay_s=self._max_delay_s,
            )
            if not plan.take:
                wait_until = now + (plan.wait_s or 0.0)
                break
            self._start(plan.take, now)
        if self._queue:
            self._arm(min(wait_until, self._min_deadline))

    def _start(self, take: int, now: float) -> None:
        entries = [self._queue.popleft() for _ in range(take)]
        batch = Batch(entries, sum(entry.rows for entry in entries), now, self._idle.pop())
        self._queued_bytes -= batch.nbytes
        self._min_deadline = min((entry.deadline for entry in self._queue), default=float("inf"))
        self._running += 1
        batch.runner.start(batch, self._finish)

    def _expire(self, now: float) -> None:
        keep: deque[Pending] = deque()
        for entry in self._queue:
            if entry.deadline <= now:
                self._queued_bytes -= entry.nbytes
                _deliver(entry, RequestTimeout())
            else:
                keep.append(entry)
        self._queue = keep
        self._min_deadline = min((entry.deadline for entry in keep), default=float("inf"))

    def _arm(self, at: float) -> None:
        if at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_later(max(0.0, at - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._dispatch()

    def _finish(self, batch: Batch, result: Outputs | Isolated | BaseException) -> None:
        self._running -= 1
        self._idle.append(batch.runner)
        if self._queue:
            self._dispatch()  # keep the model busy before spending time on responses
        scope = self._scope
        outer = scope.begin() if scope is not None else False
        try:
            if isinstance(result, Isolated):
                for entries, outputs in result.parts:
                    self._answer(entries, sum(entry.rows for entry in entries), outputs)
            else:
                self._answer(batch.entries, batch.rows, result)
        finally:
            if outer and scope is not None:
                scope.end()
        if self._observer is not None:
            self._observer.on_batch(batch)

    def _answer(self, entries: list[Pending], rows: int, result: Outputs | BaseException) -> None:
        if isinstance(result, BaseException):
            failure = _failure(result, rows)
            for entry in entries:
                _deliver(entry, failure)
        elif not self._batched:
            _deliver(entries[0], result)
        else:
            self._split(entries, rows, result)

    def _split(self, entries: list[Pending], rows: int, outputs: Outputs) -> None:
        for output in outputs:
            if not output.shape or output.shape[0] != rows:
                got = output.shape[0] if output.shape else "no"
                failure = ModelFailure(f"the model returned {got} rows for a batch of {rows}")
                for entry in entries:
                    _deliver(entry, failure)
                return
        offset = 0
        for entry in entries:
            end = offset + entry.rows
            _deliver(entry, [output[offset:end] for output in outputs])
            offset = end


def _failure(exc: BaseException, rows: int) -> WorkerError:
    """What the requests of a failed run are told: the model's refusal of an input as is (400),
    anything else as the model's own failure (500)."""
    if isinstance(exc, WorkerError):
        log.debug("the model refused an input (%d rows): %s", rows, exc.message)  # counted as a 400
        return exc
    log.error("the model failed on a batch of %d rows: %s", rows, exc)
    return ModelFailure(f"the model failed: {exc}".splitlines()[0])


def _deliver(entry: Pending, result: Outputs | WorkerError) -> None:
    try:
        entry.done(result)
    except Exception:  # a transport's callback must not break the other requests of the batch
        log.exception("delivering a result failed")
