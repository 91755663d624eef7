"""A light, steady load on a deployment through the gateway, so the dashboard moves.

``python -m dashboard.demo_load --url http://127.0.0.1:8100 --deployment demo --rate 20 --seconds 600``
Imports no Django. Sends v2 JSON requests with random inputs shaped like the
deployment's first input; prints a line per minute with what it sent and got.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8100")
    parser.add_argument("--deployment", default="demo")
    parser.add_argument("--input", default="features")
    parser.add_argument("--shape", default="1,16", help="comma-separated input shape")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    shape = [int(x) for x in args.shape.split(",")]
    size = 1
    for dim in shape:
        size *= dim
    url = f"{args.url.rstrip('/')}/v2/models/{args.deployment}/infer"
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + args.seconds
    next_report = time.monotonic() + 60
    interval = 1.0 / max(args.rate, 0.1)
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            started = time.monotonic()
            body = {
                "inputs": [
                    {
                        "name": args.input,
                        "datatype": "FP32",
                        "shape": shape,
                        "data": [random.gauss(0, 1) for _ in range(size)],
                    }
                ]
            }
            headers = {"X-Routing-Key": f"user-{random.randrange(1000)}"}  # noqa: S311
            try:
                response = client.post(url, content=json.dumps(body), headers=headers)
                counts[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                counts[type(exc).__name__] += 1
            if time.monotonic() >= next_report:
                print(f"demo load: {dict(counts)}", flush=True)
                next_report += 60
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    print(f"demo load done: {dict(counts)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
