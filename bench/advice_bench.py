"""Benchmark: does the serving advice's throughput match what a deployment made from it serves? (issue 19)

    python bench/advice_bench.py            # MLP and CNN, about 10 minutes
    python bench/advice_bench.py --quick    # the MLP only, shorter cells

Needs PostgreSQL and Redis on 127.0.0.1 and ``h2load`` (nghttp2-client): it creates (and drops)
its own database, ``kiln_advicebench``, and uses Redis db 9 under names of its own run. It starts
the platform as an operator does (``bin/kiln-run``, autoscale_stack.py), and for each model:

1. uploads the ONNX file through the REST API and waits for the conversion (profile, codec costs);
2. reads the advice before any measurement (its prediction: profiled compute plus codec time);
3. measures the version (``POST .../measurements/``: the real worker with each proposed batching
   under a closed-loop load on this machine) and reads the advice again (the measured figure);
4. deploys one replica on the process backend with exactly the advised batching, and loads it
   with h2load at the concurrency the advice's figure was measured at, over the advised protocol,
   straight at the worker and through the gateway.

The error is (advice - deployment) / deployment; the target (shared/performance.md) is within 25%
for the worker the advice describes. Prints the table and rewrites the "Serving advice" section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from autoscale_stack import Platform, poll, running_platform  # noqa: E402
from results_md import cpu_name, markers, package_version, write_section  # noqa: E402
from worker_load import LoadResult, h2load_http  # noqa: E402
from worker_models import BenchModel, build  # noqa: E402

BUDGET_MS = 50.0
TARGET_RPS = 100_000.0  # far above one worker: the advice quotes its best configuration
GOAL = 0.25


@dataclass(frozen=True)
class Row:
    model: str
    protocol: str
    batching: str
    clients: int
    predicted: float
    advised: float
    advised_p99: float
    worker: LoadResult
    gateway: LoadResult

    def error(self, served: float, figure: float | None = None) -> float:
        """(the advice's figure - what the deployment served) / what it served."""
        quoted = self.advised if figure is None else figure
        return (quoted - served) / served if served else float("inf")


def _advice(platform: Platform, model: str) -> dict[str, Any]:
    path = (
        f"/api/v1/models/{model}/versions/1/advice/?latency_budget_ms={BUDGET_MS:g}&target_rps={TARGET_RPS:g}"
    )
    answer: dict[str, Any] = platform.get(path)
    return answer


def _upload(platform: Platform, bench: BenchModel) -> None:
    platform.send("POST", "/api/v1/models/", 201, json={"name": bench.name, "description": "advice bench"})
    with bench.path.open("rb") as file:
        platform.send(
            "POST", f"/api/v1/models/{bench.name}/versions/", 201, files={"file": (bench.path.name, file)}
        )

    def converted() -> bool:
        version = platform.get(f"/api/v1/models/{bench.name}/versions/1/")
        if version["status"] == "failed":
            raise RuntimeError(f"conversion failed: {version['status_reason']}")
        return bool(version["status"] == "ready")

    poll(converted, timeout=900, interval=1, what=f"the conversion of {bench.name}")


def _measure(platform: Platform, model: str) -> None:
    path = f"/api/v1/models/{model}/versions/1/measurements/"
    platform.send("POST", path, 202, json={"latency_budget_ms": BUDGET_MS})

    def done() -> bool:
        run = platform.get(path)["run"]
        if run["status"] == "failed":
            raise RuntimeError(f"measurement failed: {run['error']}")
        print(f"  measuring {model}: {run['progress']}% {run['step']}", flush=True)
        return bool(run["status"] == "done")

    poll(done, timeout=3600, interval=5, what=f"the measurement of {model}")


def _deploy(platform: Platform, model: str, batching: dict[str, Any]) -> str:
    variants = [{"version": 1, "replicas": 1, "backend": "process", "batching": batching}]
    name = f"{model}-advised"
    platform.send(
        "POST", "/api/v1/deployments/", 201, json={"name": name, "model": model, "variants": variants}
    )

    def ready() -> str | None:
        variant = platform.get(f"/api/v1/deployments/{name}/")["variants"][0]
        urls = [w["http_url"] for w in variant["workers"] if w["state"] == "ready"]
        return urls[0] if urls else None

    worker_url: str = poll(ready, timeout=300, what=f"the replica of {name}")
    return worker_url


def _bodies(bench: BenchModel, protocol: str) -> tuple[bytes, dict[str, str]]:
    if protocol == "http_binary":
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(bench.binary_header_length),
        }
        return bench.binary_body, headers
    return bench.json_body, {"Content-Type": "application/json"}


def bench_model(platform: Platform, name: str, seconds: float, directory: Path) -> Row:
    bench = build(name, directory)
    bench = BenchModel(**{**bench.__dict__, "name": f"{name}-advice"})
    _upload(platform, bench)
    predicted = _advice(platform, bench.name)
    _measure(platform, bench.name)
    advice = _advice(platform, bench.name)
    choice = advice["choice"]
    if not advice["measured"]:
        raise RuntimeError(f"the advice is not measured after a measurement: {advice['throughput_basis']}")
    worker_url = _deploy(platform, bench.name, advice["batching"])
    body, headers = _bodies(bench, choice["protocol"])
    clients = int(choice["measured_concurrency"])
    path = f"/v2/models/{bench.name}-advised/infer"
    time.sleep(2)  # the gateway picks up the routing table
    worker = h2load_http(f"{worker_url}{path}", body, clients, seconds, headers)
    gateway = h2load_http(f"{platform.gateway_url}{path}", body, clients, seconds, headers)
    batching = advice["batching"]
    return Row(
        model=name,
        protocol=choice["protocol_label"],
        batching=f"batch {batching['max_batch_size']}, delay {batching['max_queue_delay_ms']:g} ms",
        clients=clients,
        predicted=float(predicted["choice"]["throughput_rps"]),
        advised=float(choice["measured_throughput_rps"]),
        advised_p99=float(choice["measured_p99_ms"]),
        worker=worker,
        gateway=gateway,
    )


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | protocol | advised batching | clients | predicted (compute+codec) | advice (measured) | "
        "deployment, worker | error | deployment, via gateway | error | advice p99 / worker p99 (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.protocol} | {r.batching} | {r.clients} | {r.predicted:,.0f} "
            f"({r.error(r.worker.rate, r.predicted):+.0%} vs worker) | {r.advised:,.0f} | "
            f"{r.worker.rate:,.0f} | "
            f"{r.error(r.worker.rate):+.1%} | {r.gateway.rate:,.0f} | {r.error(r.gateway.rate):+.1%} | "
            f"{r.advised_p99:.2f} / {r.worker.p99_ms:.2f} |"
        )
    return lines


def write_results(rows: list[Row], args: argparse.Namespace, load_before: tuple[float, ...]) -> None:
    start, end = markers("advice")
    within = all(abs(r.error(r.worker.rate)) <= GOAL for r in rows)
    section = "\n".join(
        [
            start,
            "## Serving advice",
            "",
            f"{datetime.now():%Y-%m-%d %H:%M}, {cpu_name()}, {os.cpu_count()} cores, load average before "
            f"{load_before[0]:.2f}; onnxruntime {package_version('onnxruntime')}. Rerun: "
            f"`python bench/advice_bench.py{' --quick' if args.quick else ''} --seconds {args.seconds:g}`.",
            "",
            "For each model: the advice for a 50 ms budget and a target far above one worker, before and "
            "after `POST .../measurements/` (the real worker with each proposed batching, closed-loop load "
            "on this machine); then one replica deployed with exactly the advised batching, loaded with "
            "h2load "
            f"at the advice's concurrency for {args.seconds:g} s over the advised protocol. Error = "
            "(advice - deployment) / deployment; the target is within 25% for the worker the advice "
            f"describes ({'met' if within else 'NOT met'} in this run).",
            "",
            *table(rows),
            "",
            "The prediction is the advice before any measurement (profiled ONNX Runtime time plus codec time "
            "per request); the measured advice is what the advice quotes now. Through the gateway a "
            "deployment serves up to 15% less (its own budget); the advice describes a worker.",
            end,
        ]
    )
    write_section(section, start, end)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the MLP only, 1 s measurement cells")
    parser.add_argument(
        "--seconds", type=float, default=15, help="h2load's duration per deployment cell [15]"
    )
    parser.add_argument("--database", default="kiln_advicebench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args(argv)
    models = ["mlp"] if args.quick else ["mlp", "cnn"]
    intervals = {"KILN_ADVICE_MEASURE_SECONDS": 1.0 if args.quick else 5.0, "KILN_REPORT_INTERVAL_S": 2.0}
    load_before = os.getloadavg()
    rows = []
    with (
        running_platform(args.database, args.redis_url, intervals) as platform,
        tempfile.TemporaryDirectory() as tmp,
    ):
        print(f"platform up at {platform.web_url}", flush=True)
        for name in models:
            rows.append(bench_model(platform, name, args.seconds, Path(tmp)))
            print("\n".join(table(rows)), flush=True)
    write_results(rows, args, load_before)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
