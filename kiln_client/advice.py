"""``kiln measure`` and ``kiln advise``: measure a version on the platform's machine, then ask for advice.

``kiln measure MODEL VERSION --wait`` starts the real worker there with each batching the
platform's rule can propose for the budget, waits for the run and prints every measured cell;
``kiln advise MODEL VERSION --budget-ms 20 --target-rps 2000`` prints the advice, which quotes
those measurements (or says its figures are predicted when there are none).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kiln_client.api import ApiError, Client
from kiln_client.progress import Progress

FINISHED = ("done", "failed")


def cmd_measure(client: Client, args: argparse.Namespace, out: Progress) -> int:
    path = f"/models/{args.model}/versions/{args.version}/measurements/"
    body = {} if args.budget_ms is None else {"latency_budget_ms": args.budget_ms}
    run = client.post(path, body)
    out.line(f"measurement {run['id']} of {args.model} v{args.version}: {run['status']}")
    if not args.wait:
        print(json.dumps({"id": run["id"], "status": run["status"]}))
        return 0
    deadline = time.monotonic() + args.timeout
    while run["status"] not in FINISHED:
        if time.monotonic() > deadline:
            raise ApiError(f"measurement {run['id']} is still {run['status']} after {args.timeout:.0f} s")
        time.sleep(1.0)
        answer = client.get(path)
        run = answer["run"]
        out.line(f"measurement {run['id']}: {run['status']} {run['progress']}% {run['step']}".rstrip())
    if run["status"] == "failed":
        sys.stderr.write(f"measurement failed: {run['error']}\n")
        return 1
    print(f"measured on {run['machine']} at {run['finished_at']}")
    print(
        f"{'batch':>5} {'inst':>4} {'protocol':<12} {'clients':>7} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    )
    for row in answer["rows"]:
        print(
            f"{row['batch_size']:>5} {row['instances']:>4} {row['protocol']:<12} {row['concurrency']:>7} "
            f"{row['throughput_rps']:>10.1f} {_ms(row['p50_ms']):>8} {_ms(row['p99_ms']):>8}"
        )
    return 0


def cmd_advise(client: Client, args: argparse.Namespace, out: Progress) -> int:
    advice = client.get(
        f"/models/{args.model}/versions/{args.version}/advice/",
        latency_budget_ms=args.budget_ms,
        target_rps=args.target_rps,
    )
    print(advice["explanation"] or advice["shortfall"])
    choice: dict[str, Any] | None = advice["choice"]
    if choice is not None:
        measured = f"{choice['measured_throughput_rps']:,.0f}" if choice["measured"] else "not measured"
        print(
            f"batch {choice['batch_size']}, queue delay {choice['queue_delay_ms']:g} ms, "
            f"{choice['protocol_label']}, {advice['replicas']} replica(s); "
            f"req/s per worker: measured {measured}, predicted {choice['throughput_rps']:,.0f}"
        )
    print(advice["throughput_basis"])
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def add_advice_parsers(sub: Any) -> None:
    """The ``measure`` and ``advise`` subcommands (``sub``: the parser's subparsers)."""
    p = sub.add_parser("measure", help="measure a version's serving options on the platform's machine")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("--budget-ms", type=float, help="latency budget the options are proposed for")
    p.add_argument("--wait", action="store_true", help="wait for the run and print what it measured")
    p.add_argument("--timeout", type=float, default=1800)
    p.set_defaults(run=cmd_measure)

    p = sub.add_parser("advise", help="serving advice for a latency budget and a throughput target")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("--budget-ms", type=float, default=50.0)
    p.add_argument("--target-rps", type=float, default=100.0)
    p.set_defaults(run=cmd_advise)
