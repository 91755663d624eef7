"""Benchmark: autoscaling on the process backend, a step load and a cold start from zero (issue 21).

    python bench/autoscale_bench.py            # about 3 minutes
    python bench/autoscale_bench.py --quick    # shorter phases, about 2 minutes

Needs PostgreSQL and Redis on 127.0.0.1: it creates (and drops) its own database, ``kiln_asbench``,
and uses Redis db 8 under names of its own run (deleted at the end). It starts the platform as an
operator does (``bin/kiln-run``, see autoscale_stack.py), uploads a small CNN through the REST API,
deploys one replica on the process backend, sets an autoscaling policy and measures:

1. Step load: closed-loop HTTP JSON clients through the gateway, as many as 1x the policy's
   ``target_in_flight``, then 8x for ``--load-s``, then 1x again until the replicas are back down.
   Time until the replicas the step asks for are ready, p50/p99 during the ramp and the plateau,
   failed requests (anything but 200), replicas right after the load and after the downscale
   delay, and whether the replicas ever went down and up again (flapping), from a trace of the
   deployment API polled twice a second.
2. Cold start: the policy's minimum goes to 0; once the variant has no worker, 50 callers send
   their first request at the same moment: their latency (min/p50/max), failures, and the version's
   measured cold start (the advice API's ``cold_start_s``) the target is read against.

Prints the tables and rewrites the "Autoscaling" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from autoscale_report import ColdStart, Step, write_results  # noqa: E402
from autoscale_stack import Platform, deploy_cnn, poll, request_body, running_platform  # noqa: E402

MODEL, DEPLOYMENT = "asbench-cnn", "asbench"
POLICY = f"/api/v1/deployments/{DEPLOYMENT}/variants/primary/autoscaling/"
HEADERS = {"Content-Type": "application/json"}


class Load:
    """Closed-loop clients through the gateway; ``set_clients`` changes how many send at once."""

    def __init__(self, url: str, most: int) -> None:
        self.url = url
        self.active = 0
        self.records: list[tuple[float, float, int]] = []
        """(start, seconds, status) of every request, 0 for a transport error; monotonic clock."""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(most)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)

    def set_clients(self, count: int) -> None:
        self.active = count

    def _loop(self, index: int) -> None:
        body = request_body(index)
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                if index >= self.active:
                    time.sleep(0.005)
                    continue
                started = time.monotonic()
                try:
                    status = client.post(self.url, content=body, headers=HEADERS).status_code
                except httpx.HTTPError as exc:
                    status = 0
                    self.errors.append(repr(exc))
                self.records.append((started, time.monotonic() - started, status))

    def window(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [r for r in self.records if start <= r[0] < end]


@dataclass(frozen=True)
class Sample:
    at: float
    replicas: int
    """What the variant should run (the autoscaler's last decision)."""
    ready: int
    workers: int


@dataclass
class Trace:
    """The variant's replicas over time, polled from the deployment API in a thread."""

    platform: Platform
    samples: list[Sample] = field(default_factory=list)
    workers: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    """Every worker seen: the platform's started_at and ready_at (Unix time)."""
    decisions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """Every scaling decision seen (the API shows the last few), by time and reason."""
    _stop: threading.Event = field(default_factory=threading.Event)

    def variant(self) -> dict[str, Any]:
        body: dict[str, Any] = self.platform.get(f"/api/v1/deployments/{DEPLOYMENT}/")["variants"][0]
        return body

    def __enter__(self) -> Trace:
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                v = self.variant()
            except (httpx.HTTPError, RuntimeError):
                continue
            self.samples.append(
                Sample(time.monotonic(), v["replicas"], v["ready_replicas"], len(v["workers"]))
            )
            self.remember(v)

    def remember(self, variant: dict[str, Any]) -> None:
        for worker in variant["workers"]:
            self.workers[worker["id"]] = (unix(worker["started_at"]), unix(worker["ready_at"]))
        for decision in variant["scaling_decisions"]:
            self.decisions[decision["created_at"], decision["reason"]] = decision

    def decided(self, since: float, until: float) -> list[tuple[float, dict[str, Any]]]:
        """(Unix time, decision) of the decisions taken between ``since`` and ``until``, oldest first."""
        taken = ((unix(d["created_at"]) or 0.0, d) for d in self.decisions.values())
        return sorted(((t, d) for t, d in taken if since <= t <= until), key=lambda pair: pair[0])

    def ready_since(self, since: float, *, slack: float = 0.0) -> list[float]:
        """Seconds from ``since`` (Unix time) to each worker's ready_at from ``since - slack`` on, sorted."""
        return sorted(r - since for _, r in self.workers.values() if r is not None and r >= since - slack)

    def latest(self) -> Sample:
        poll(lambda: self.samples, timeout=60, what="a first trace sample")
        return self.samples[-1]

    def first(self, since: float, check: Any) -> Sample | None:
        return next((s for s in self.samples if s.at >= since and check(s)), None)


def unix(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def needed(in_flight: float, target: float) -> int:
    return max(math.ceil(in_flight / target - 1e-9), 1)


def step_load(args: argparse.Namespace, load: Load, trace: Trace) -> Step:
    """1x target in flight, 8x for ``load_s``, then 1x until the replicas are back down."""
    base_clients = max(1, round(args.target_in_flight))
    step_clients = max(1, round(8 * args.target_in_flight))
    expected = min(args.max_replicas, needed(step_clients, args.target_in_flight))
    low = max(1, min(args.max_replicas, needed(base_clients, args.target_in_flight)))
    began, began_unix = time.monotonic(), time.time()
    load.set_clients(base_clients)
    time.sleep(args.base_s)
    stepped, stepped_unix = time.monotonic(), time.time()
    ready_before = trace.latest().ready
    load.set_clients(step_clients)
    print(f"step: {base_clients} -> {step_clients} clients, expecting {expected} ready replicas", flush=True)
    time.sleep(args.load_s)
    ended = time.monotonic()
    load.set_clients(base_clients)
    at_end = trace.latest()
    print(f"load ended: {at_end.replicas} replicas ({at_end.ready} ready); back to {base_clients} client(s)")
    time.sleep(max(0.0, ended + args.downscale_delay_s - time.monotonic()))
    after_delay = trace.latest()
    print(
        f"after the downscale delay: {after_delay.replicas} replicas ({after_delay.ready} ready)", flush=True
    )
    down = poll(
        lambda: trace.first(ended, lambda s: s.replicas <= low and s.ready <= low),
        timeout=args.downscale_delay_s + 120,
        what=f"the replicas back at {low}",
    )
    time.sleep(args.settle_s)
    settled = time.monotonic()
    load.set_clients(0)
    trace.remember(trace.variant())
    ready = trace.first(stepped, lambda s: s.ready >= expected)
    new_ready = [t for t in trace.ready_since(stepped_unix) if t < ended - stepped]
    wanted = expected - ready_before
    exact = 0.0 if wanted <= 0 else (new_ready[wanted - 1] if len(new_ready) >= wanted else None)
    ready_at = ended if exact is None else stepped + exact
    return Step(
        base_clients=base_clients,
        step_clients=step_clients,
        expected=expected,
        low=low,
        ready_after_s=None if ready is None or ready.at >= ended else ready.at - stepped,
        ready_at_after_s=exact,
        phases={
            "baseline": load.window(began, stepped),
            "ramp": load.window(stepped, ready_at),
            "plateau": load.window(ready_at, ended),
            "back to 1x": load.window(ended, settled),
        },
        replicas_at_end=(at_end.replicas, at_end.ready),
        replicas_after_delay=(after_delay.replicas, after_delay.ready),
        down_after_s=down.at - ended,
        trace=[(s.at - stepped, s.replicas, s.ready) for s in trace.samples if began <= s.at <= settled],
        reasons=[
            f"{d['to_replicas']} {d['reason']} at {t - stepped_unix:+.1f} s"
            f" ({d['short_load']:g}/{d['long_load']:g})"
            for t, d in trace.decided(began_unix, time.time())
        ],
    )


def first_callers(url: str, count: int) -> tuple[float, list[tuple[float, int]]]:
    """``count`` callers, each with its own connection, sending one request at the same moment.

    Returns when they were released (Unix time) and each one's (seconds, status)."""
    released: list[float] = []
    barrier = threading.Barrier(count, action=lambda: released.append(time.time()))
    answers: list[tuple[float, int]] = []

    def call(index: int) -> None:
        body = request_body(1000 + index)
        with httpx.Client(timeout=180) as client:
            barrier.wait()
            started = time.monotonic()
            try:
                status = client.post(url, content=body, headers=HEADERS).status_code
            except httpx.HTTPError:
                status = 0
            answers.append((time.monotonic() - started, status))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return released[0], answers


def cold_start(args: argparse.Namespace, platform: Platform, trace: Trace, url: str) -> ColdStart:
    """Minimum 0, wait for no worker at all, then ``--callers`` first requests at once."""
    platform.send("PUT", POLICY, 202, json={"min_replicas": 0, "idle_before_zero_s": args.idle_s})
    idle_from = time.monotonic()

    def at_zero() -> bool:
        v = trace.variant()
        return bool(v["replicas"] == 0 and v["workers"] == [])

    poll(at_zero, timeout=args.idle_s + 180, what="the variant at zero")
    zero_after = time.monotonic() - idle_from
    print(f"at zero {zero_after:.1f} s after the policy allowed it; {args.callers} first callers", flush=True)
    time.sleep(1)
    fired, answers = first_callers(url, args.callers)
    variant = trace.variant()
    trace.remember(variant)
    decided = trace.decided(fired - 1, time.time())
    activations = [t - fired for t, d in decided if d["reason"] == "activate"]
    starts = [s - fired for s, _ in trace.workers.values() if s is not None and s >= fired - 1]
    advice = platform.get(f"/api/v1/models/{MODEL}/versions/1/advice/")
    return ColdStart(
        callers=args.callers,
        latencies=sorted(a[0] for a in answers),
        failed=sum(1 for a in answers if a[1] != 200),
        zero_after_s=zero_after,
        advice_cold_start_s=advice.get("cold_start_s"),
        variant_cold_start_s=variant.get("cold_start_s"),
        activate_after_s=min(activations, default=None),
        first_start_after_s=min(starts, default=None),
        first_ready_after_s=min(trace.ready_since(fired, slack=1), default=None),
        reasons=[f"{d['to_replicas']} {d['reason']} at {t - fired:+.2f} s" for t, d in decided],
    )


def run(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    intervals = {
        "KILN_AUTOSCALE_INTERVAL_S": args.autoscale_interval_s,
        "KILN_REPORT_INTERVAL_S": 1.0,
        "KILN_RECONCILE_INTERVAL_S": 1.0,
    }
    policy = {
        "min_replicas": 1,
        "max_replicas": args.max_replicas,
        "target_in_flight": args.target_in_flight,
        "upscale_delay_s": args.upscale_delay_s,
        "downscale_delay_s": args.downscale_delay_s,
        "idle_before_zero_s": 3600,
    }
    with running_platform(args.database, args.redis_url, intervals, args.keep_logs) as platform:
        print(f"platform up at {platform.web_url} (gateway {platform.gateway_url})", flush=True)
        deploy_cnn(platform, MODEL, DEPLOYMENT, intra_op_threads=args.intra_op_threads)
        platform.send("PUT", POLICY, 202, json=policy)
        url = f"{platform.gateway_url}/v2/models/{DEPLOYMENT}/infer"
        with Trace(platform) as trace, Load(url, max(1, round(8 * args.target_in_flight))) as load:
            step = step_load(args, load, trace)
            cold = cold_start(args, platform, trace, url)
        errors = load.errors[:5]
    write_results(args, policy, intervals, step, cold, load_before, errors)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="shorter phases (load 30 s, downscale delay 15 s)"
    )
    parser.add_argument("--load-s", type=float, help="seconds at 8x the target [60; --quick 30]")
    parser.add_argument("--base-s", type=float, default=10, help="seconds at 1x before the step [10]")
    parser.add_argument(
        "--downscale-delay-s", type=float, help="the policy's downscale delay [30; --quick 15]"
    )
    parser.add_argument("--upscale-delay-s", type=float, default=2, help="the policy's upscale delay [2]")
    parser.add_argument(
        "--settle-s", type=float, default=5, help="seconds at 1x after the replicas came down [5]"
    )
    parser.add_argument("--idle-s", type=float, default=5, help="the policy's idle time before zero [5]")
    parser.add_argument("--target-in-flight", type=float, default=1, help="the policy's target [1]")
    parser.add_argument("--max-replicas", type=int, default=8, help="the policy's maximum [8]")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="ONNX Runtime threads per replica (0: one per core) [1]",
    )
    parser.add_argument("--callers", type=int, default=50, help="concurrent first callers after zero [50]")
    parser.add_argument(
        "--autoscale-interval-s", type=float, default=0.5, help="KILN_AUTOSCALE_INTERVAL_S [0.5]"
    )
    parser.add_argument(
        "--database", default="kiln_asbench", help="PostgreSQL database made and dropped [kiln_asbench]"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8", help="[redis://127.0.0.1:6379/8]")
    parser.add_argument(
        "--keep-logs", type=Path, help="copy the platform's and workers' logs to this directory"
    )
    parser.add_argument("--no-results", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    args.load_s = args.load_s or (30.0 if args.quick else 60.0)
    args.downscale_delay_s = args.downscale_delay_s or (15.0 if args.quick else 30.0)
    # A stopped run still stops the platform and its workers and drops its database (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (&)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
