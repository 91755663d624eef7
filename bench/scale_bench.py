"""Registry and dashboard at scale: how list pages and chart series grow with the tables (issue 22).

``python bench/scale_bench.py [--models 10,1000,20000] [--workers 1,20,200] [--repeat 7]``

Seeds a throwaway database (Django's ``test_`` database of the configured one, made and
dropped by this script: never the configured database itself) in bulk: models with 4
versions each (a conversion report on every one), a production alias and 4 audit events
per model; then one deployment whose workers have reported for 7 days, kept as the rollup
task keeps them (raw rows for the last hour, 1m rows for 26 hours, 10m and 1h rows for the
week). It times each page and endpoint in-process with Django's test client (median of
``--repeat`` requests, after one warm-up), prints the tables and rewrites the "Registry
and dashboard at scale" section of bench/RESULTS.md. Use PostgreSQL
(``DATABASE_URL=postgres://...``) for numbers that mean something.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import markers, write_section  # noqa: E402

START, END = markers("scale")
LE = ["0.5", "1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "250.0", "+Inf"]

PAGES = [
    ("web home (model list)", "/"),
    ("web model search", "/?search=model-0001&state=ready"),
    ("web model page", "/models/{model}/"),
    ("web audit trail", "/audit/"),
    ("GET /api/v1/models/", "/api/v1/models/"),
    ("GET /api/v1/models/?tag=nlp&state=failed", "/api/v1/models/?tag=nlp&state=failed"),
    ("GET versions of one model", "/api/v1/models/{model}/versions/"),
    ("GET /api/v1/audit-events/ (page 1)", "/api/v1/audit-events/"),
    ("GET /api/v1/audit-events/?cursor=", "/api/v1/audit-events/?cursor="),
    ("admin: models", "/admin/registry/registeredmodel/"),
    ("admin: model versions", "/admin/registry/modelversion/"),
    ("admin: audit events", "/admin/registry/auditevent/"),
]


def _setup() -> Any:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", "scale-bench-only")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    print(f"seeding the throwaway database {name} ({connection.vendor})", flush=True)
    return connection


def _time(client: Any, url: str, repeat: int) -> tuple[float, int, int]:
    """Median milliseconds, body size in bytes, status."""
    response = client.get(url)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), len(response.content), response.status_code


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_registry(sizes: list[int], repeat: int) -> tuple[list[list[str]], str]:
    from django.contrib.auth.models import User
    from django.test import Client

    from tests.support.catalog import seed_catalog

    user = User.objects.create_superuser("bench", "bench@example.com", "bench-password")
    client = Client()
    client.force_login(user)
    rows: dict[str, list[str]] = {label: [label] for label, _ in PAGES}
    made = 0
    for size in sizes:
        began = time.perf_counter()
        prefix = f"model-{made:05d}"
        seed_catalog(owner=user, models=size - made, prefix=prefix)
        seeded = time.perf_counter() - began
        model = f"{prefix}-{size - made - 1:05d}"
        made = size
        _analyze()
        print(f"{size:,} models seeded in {seeded:.0f} s", flush=True)
        for label, url in PAGES:
            ms, size_b, status = _time(client, url.format(model=model), repeat)
            cell = f"{ms:,.0f} ms, {size_b / 1024:,.0f} KB" if status == 200 else f"HTTP {status}"
            rows[label].append(cell)
            print(f"  {label}: {cell}", flush=True)
    header = "| page or endpoint | " + " | ".join(f"{s:,} models" for s in sizes) + " |"
    return list(rows.values()), header


def _analyze() -> None:
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def _histogram(seed: int) -> dict[str, Any]:
    counts = [0] * len(LE)
    for i in range(3):
        counts[(seed + i * 3) % 6] += 20 + seed % 7
    return {"le": LE, "counts": counts}


def seed_reports(workers: int, days: int = 7) -> Any:
    """One deployment whose ``workers`` have reported for ``days``, kept as the rollup task keeps them."""
    from django.contrib.auth.models import User
    from django.db import connection

    from deployments.models import Deployment, Report, Variant, Worker
    from registry.models import ModelVersion

    owner = User.objects.get(username="bench")
    version = ModelVersion.objects.order_by("pk").first()
    assert version is not None
    name = f"bench-{workers}"
    deployment = Deployment.objects.create(name=name, model=version.model, created_by=owner)
    variants = [
        Variant.objects.create(deployment=deployment, name="primary", version=version, weight=90),
        Variant.objects.create(deployment=deployment, name="candidate", version=version, weight=10),
    ]
    made = Worker.objects.bulk_create(
        [
            Worker(variant=variants[i % 2], version=version, backend="process", state="ready")
            for i in range(workers)
        ]
    )
    now = datetime.now(tz=UTC)
    tiers = [  # resolution, width, how far back
        (Report.Resolution.HOUR, 3600, days * 86400),
        (Report.Resolution.TEN_MINUTES, 600, days * 86400),
        (Report.Resolution.MINUTE, 60, 26 * 3600),
        (Report.Resolution.RAW, 5, 3600),
    ]
    total = 0
    for resolution, width, back in tiers:
        last = int(now.timestamp()) // width * width - (width if resolution != "raw" else 0)
        if connection.vendor == "postgresql":  # the same rows as below, made by the database itself
            total += _insert_in_sql(deployment.pk, resolution, width, last - back, last)
            continue
        batch: list[Report] = []
        for worker in made:
            for t in range(last - back, last, width):
                moment = datetime.fromtimestamp(t, tz=UTC)
                requests = 50 * width // 5
                raw = resolution == Report.Resolution.RAW
                batch.append(
                    Report(
                        worker=worker,
                        variant=worker.variant,
                        deployment=deployment,
                        version_number=1,
                        resolution=resolution,
                        start=moment - timedelta(seconds=width) if raw else moment,
                        end=moment if raw else moment + timedelta(seconds=width),
                        seconds=float(width),
                        requests=requests,
                        errors=t % 3,
                        outcomes={"success": requests - t % 3, "timeout": t % 3},
                        latency_histogram=_histogram(t // width + worker.pk),
                        batch_histogram={"le": ["1", "8", "32", "+Inf"], "counts": [requests, 0, 0, 0]},
                        queue_depth=1.5,
                        cpu_percent=40.0 + worker.pk % 20,
                        rss_bytes=300 * 2**20,
                        samples=max(1, width // 5),
                    )
                )
                if len(batch) >= 5000:
                    Report.objects.bulk_create(batch)
                    total += len(batch)
                    batch = []
        Report.objects.bulk_create(batch)
        total += len(batch)
    if connection.vendor == "postgresql":
        total += _insert_variant_tiers(deployment.pk)
    else:  # the rollup task's first pass makes the variants' tiers from the workers' ones
        from deployments.services import downsample_reports

        downsample_reports()
    print(f"{workers} workers: {total:,} report rows seeded", flush=True)
    _analyze()
    return deployment


def _insert_in_sql(deployment_id: int, resolution: str, width: int, first: int, last: int) -> int:
    """``seed_reports``' rows of one tier for every worker of the deployment, in one INSERT ... SELECT
    (PostgreSQL): the histogram is ``_histogram``'s, spelled in SQL."""
    from django.db import connection

    from deployments.models import Report, Variant, Worker

    def count(position: int) -> str:
        twice = f"CASE WHEN s.seed %% 6 = {position} THEN 2 ELSE 0 END"
        once = f"CASE WHEN (s.seed + 3) %% 6 = {position} THEN 1 ELSE 0 END"
        return f"({twice} + {once}) * (20 + s.seed %% 7)"

    counts = "jsonb_build_array(" + ", ".join(count(p) for p in range(len(LE))) + ")"
    requests = 50 * width // 5
    raw = resolution == Report.Resolution.RAW
    span = (
        f"to_timestamp(s.t) - interval '{width} seconds', to_timestamp(s.t)"
        if raw
        else (f"to_timestamp(s.t), to_timestamp(s.t) + interval '{width} seconds'")
    )
    sql = (
        f"INSERT INTO {Report._meta.db_table} (worker_id, variant_id, deployment_id, version_number,"  # noqa: S608
        ' resolution, start, "end", seconds, requests, errors, outcomes, latency_histogram,'
        " batch_histogram, queue_depth, in_flight, cpu_percent, rss_bytes, samples)"
        f" SELECT s.worker_id, s.variant_id, %s, 1, %s, {span}, %s, %s, s.t %% 3,"
        " jsonb_build_object('success', %s - s.t %% 3, 'timeout', s.t %% 3),"
        f" jsonb_build_object('le', %s::jsonb, 'counts', {counts}),"
        ' jsonb_build_object(\'le\', \'["1", "8", "32", "+Inf"]\'::jsonb, \'counts\','
        " jsonb_build_array(%s, 0, 0, 0)), 1.5, 0, 40.0 + s.worker_id %% 20, %s, %s"
        f" FROM (SELECT w.id AS worker_id, w.variant_id, t, t / {width} + w.id AS seed"
        f" FROM {Worker._meta.db_table} w JOIN {Variant._meta.db_table} v ON v.id = w.variant_id"
        " CROSS JOIN generate_series(%s, %s, %s) AS t WHERE v.deployment_id = %s) s"
    )
    params: list[int | float | str] = [
        deployment_id, resolution, float(width), requests, requests, json.dumps(LE), requests,
        300 * 2**20, max(1, width // 5), first, last - 1, width, deployment_id,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def _insert_variant_tiers(deployment_id: int) -> int:
    """The variants' rows (all their workers added up) of every tier, as the rollup task folds
    them, from the workers' rows ``seed_reports`` made (PostgreSQL)."""
    from django.db import connection

    from deployments.models import Report

    def summed(field: str, size: int) -> str:
        parts = ", ".join(f"SUM(({field} -> 'counts' ->> {i})::bigint)" for i in range(size))
        return f"jsonb_build_object('le', {field} -> 'le', 'counts', jsonb_build_array({parts}))"

    columns = (
        'worker_id, variant_id, deployment_id, version_number, resolution, start, "end", seconds,'
        " requests, errors, outcomes, latency_histogram, batch_histogram, queue_depth, in_flight,"
        " samples, replicas"
    )
    values = (
        "NULL, variant_id, deployment_id, 1, %s, {start}, {end}, %s, SUM(requests), SUM(errors),"
        " jsonb_build_object('success', SUM((outcomes ->> 'success')::bigint),"
        " 'timeout', SUM((outcomes ->> 'timeout')::bigint)),"
        f" {summed('latency_histogram', len(LE))}, {summed('batch_histogram', 4)},"
        " SUM(queue_depth) / {per_worker}, 0, SUM(samples), COUNT(DISTINCT worker_id)"
    )
    table, total = Report._meta.db_table, 0
    with connection.cursor() as cursor:
        for resolution, source, width in (("v1h", "1h", 3600), ("v10m", "10m", 600), ("v1m", "1m", 60)):
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT "  # noqa: S608
                + values.format(start="start", end='"end"', per_worker=1)
                + f" FROM {table} WHERE deployment_id = %s AND resolution = %s"
                " GROUP BY variant_id, deployment_id, start, \"end\", latency_histogram -> 'le',"
                " batch_histogram -> 'le'",
                [resolution, float(width), deployment_id, source],
            )
            total += int(cursor.rowcount)
        bucket = 'to_timestamp(FLOOR(EXTRACT(EPOCH FROM "end") / 15) * 15)'
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT "  # noqa: S608
            + values.format(start=bucket, end=f"{bucket} + interval '15 seconds'", per_worker=3)
            + f" FROM {table} WHERE deployment_id = %s AND resolution = 'raw'"
            f" GROUP BY variant_id, deployment_id, {bucket}, latency_histogram -> 'le',"
            " batch_histogram -> 'le'",
            ["v15s", 15.0, deployment_id],
        )
        return total + int(cursor.rowcount)


def bench_series(worker_counts: list[int], repeat: int) -> tuple[list[list[str]], str]:
    from django.contrib.auth.models import User
    from django.test import Client

    from deployments.series import RANGES

    client = Client()
    client.force_login(User.objects.get(username="bench"))
    table: list[list[str]] = []
    for workers in worker_counts:
        began = time.perf_counter()
        deployment = seed_reports(workers)
        print(f"  seeded in {time.perf_counter() - began:.0f} s", flush=True)
        row = [f"{workers} workers"]
        for name in RANGES:
            url = f"/api/v1/dashboard/deployments/{deployment.name}/series/?range={name}"
            ms, size_b, status = _time(client, url, repeat)
            etag = client.get(url)["ETag"]
            again = client.get(url, HTTP_IF_NONE_MATCH=etag)
            cell = f"{ms:,.0f} ms, {size_b / 1024:,.0f} KB" if status == 200 else f"HTTP {status}"
            cell += f" ({again.status_code} on refresh)"
            row.append(cell)
            print(f"  {name}: {cell}", flush=True)
        table.append(row)
    header = "| series of one deployment, 7 days of reports | " + " | ".join(RANGES) + " |"
    return table, header


def _current_rss_mb() -> float:
    """Resident memory now (not the peak): /proc/self/statm's second field, in pages."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(rounds: int) -> tuple[float, float, int]:
    """Every page and series again ``rounds`` times, on the largest tables: resident memory after
    the first round and after the last, and the requests served in between."""
    from django.contrib.auth.models import User
    from django.test import Client

    from deployments.models import Deployment
    from deployments.series import RANGES
    from registry.models import RegisteredModel

    client = Client()
    client.force_login(User.objects.get(username="bench"))
    model = RegisteredModel.objects.order_by("-pk").values_list("name", flat=True).first()
    deployment = Deployment.objects.order_by("-pk").values_list("name", flat=True).first()
    urls = [url.format(model=model) for _, url in PAGES]
    urls += [f"/api/v1/dashboard/deployments/{deployment}/series/?range={name}" for name in RANGES]
    for url in urls:
        client.get(url)
    first = _current_rss_mb()
    for _ in range(rounds):
        for url in urls:
            client.get(url)
    return first, _current_rss_mb(), rounds * len(urls)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="10,1000,20000")
    parser.add_argument("--workers", default="1,20,200")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--soak", type=int, default=20, help="rounds over every page and range at the end [20]"
    )
    parser.add_argument("--no-results", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    # A stopped run still drops its throwaway database (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    connection = _setup()
    load_before = os.getloadavg()[0]
    try:
        rss_before = _rss_mb()
        registry, registry_header = bench_registry([int(s) for s in args.models.split(",")], args.repeat)
        rss_registry = _rss_mb()
        series, series_header = bench_series([int(s) for s in args.workers.split(",")], args.repeat)
        rss_series = _rss_mb()
        soak_first, soak_last, soaked = soak(args.soak)
        vendor = connection.vendor
    finally:
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)
    lines = [
        START,
        "## Registry and dashboard at scale",
        "",
        f"Measured {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} cores; Python {platform.python_version()}; {vendor}.",
        f"Command: `python bench/scale_bench.py --models {args.models} --workers {args.workers}`"
        f" (median of {args.repeat} requests in-process after a warm-up; sizes are response bodies)."
        f" Load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f}"
        + (
            " (above the core count, other jobs shared the machine: compare cells of one run, not runs)."
            if max(load_before, os.getloadavg()[0]) > (os.cpu_count() or 1)
            else " (a quiet machine)."
        ),
        "Each model has 4 versions with a conversion report, a production alias and 4 audit events;"
        " each worker's reports are kept as the rollup task keeps them"
        " (raw 1 h, 1m 26 h, 10m and 1h 7 days; the variants' tiers v15s 1 h, v1m 26 h, v10m and v1h"
        " 7 days).",
        "",
        registry_header,
        "|---|" + "---:|" * (len(registry_header.split("|")) - 3),
        *("| " + " | ".join(row) + " |" for row in registry),
        "",
        series_header,
        "|---|" + "---:|" * (len(series_header.split("|")) - 3),
        *("| " + " | ".join(row) + " |" for row in series),
        "",
        f"Peak memory of the process: {rss_before:,.0f} MB before, {rss_registry:,.0f} MB after the lists,"
        f" {rss_series:,.0f} MB after the series (the seeding itself included). While serving:"
        f" {soak_first:,.0f} MB resident after one round over every page and range on the largest tables,"
        f" {soak_last:,.0f} MB after {soaked:,} more requests.",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_results:
        write_section(section, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
