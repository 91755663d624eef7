"""The dashboard's series aggregated in SQL from the rollup tier that fits the range.

A range reads its own tier (the week reads 1h rows) up to that tier's watermark for
the deployment, then each finer tier from the coarser one's watermark on, so the
newest minutes are there before they are rolled up and nothing is counted twice.
Counters, outcome counts and histogram buckets are summed in the database (JSON
arrays unnested with their position), gauges averaged; Python only reads
percentiles off the summed buckets. PostgreSQL and SQLite each get their spelling.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from deployments import histograms
from deployments.models import Report
from deployments.services.rollups import TIER, TIERS, watermark

TABLE = Report._meta.db_table
MAX_BUCKETS = 64


@dataclass(frozen=True)
class Dialect:
    bucket: str  # epoch seconds of {pos}, floored to {step}
    count: str  # the {i}th count of the histogram in column {field}, as an integer
    same_bounds: str  # the histogram in {field} has the bounds given as a JSON parameter
    outcomes: str  # FROM clause addition: one row (o.key, o.value) per outcome of a report
    outcome_value: str


POSTGRES = Dialect(
    bucket="(FLOOR(EXTRACT(EPOCH FROM r.{pos}) / {step}) * {step})::bigint",
    count="COALESCE((r.{field} -> 'counts' ->> {i})::bigint, 0)",
    same_bounds="(r.{field} -> 'le') = %s::jsonb",
    outcomes="CROSS JOIN LATERAL jsonb_each_text(r.outcomes) AS o(key, value)",
    outcome_value="o.value::bigint",
)
SQLITE = Dialect(
    bucket="(CAST(strftime('%%s', r.{pos}) AS INTEGER) / {step}) * {step}",
    count="COALESCE(CAST(json_extract(r.{field}, '$.counts[{i}]') AS INTEGER), 0)",
    same_bounds="json_extract(r.{field}, '$.le') = json(%s)",
    outcomes=", json_each(r.outcomes) AS o",
    outcome_value="CAST(o.value AS INTEGER)",
)


def _dialect() -> Dialect:
    return POSTGRES if connection.vendor == "postgresql" else SQLITE


@dataclass
class Aggregates:
    """What the series needs, summed per (variant, bucket) and per (worker, bucket)."""

    scalars: dict[tuple[int, int], dict[str, float]]
    latency: dict[tuple[int, int], dict[str, Any]]
    outcomes: dict[tuple[int, int], dict[str, int]]
    batch: dict[int, dict[str, Any]]
    workers: dict[tuple[int, int], dict[str, float | None]]
    last_end: datetime | None


def tier_conditions(
    deployment_id: int, resolution: str, first: datetime
) -> tuple[str, list[Any], datetime | None]:
    """The WHERE clause choosing each tier's rows, its parameters, and the newest row's end."""
    chain = [t for t in reversed(TIERS) if t.seconds <= TIER[resolution].seconds]
    clauses: list[str] = []
    params: list[Any] = []
    since = first
    newest: datetime | None = None
    for tier in chain:
        # A rollup row sits at its start, so "start >= since" is "end >= since + width" (indexed).
        clauses.append('(r.resolution = %s AND r."end" >= %s)')
        params += [tier.resolution, since + timedelta(seconds=tier.seconds)]
        mark = watermark(tier.resolution, deployment_id)
        if mark is not None:
            newest = max(newest, mark) if newest else mark
            since = max(since, mark)
    return "r.deployment_id = %s AND (" + " OR ".join(clauses) + ")", [deployment_id, *params], newest


def aggregate(
    deployment_id: int, resolution: str, step: int, first: datetime, worker_ids: list[int]
) -> Aggregates:
    """The aggregations of one deployment's series: counters and histograms, outcomes, and the
    gauges of the workers ``worker_ids`` (the lines a chart shows, not every worker's).

    Histogram buckets are summed position by position (no unnesting): every report of a
    deployment has the bounds of the worker's contract; rows with other bounds than the
    newest report's add nothing to the percentiles (as ``histograms.merge`` skips them).
    """
    d = _dialect()
    where, params, newest = tier_conditions(deployment_id, resolution, first)
    bucket = (
        "CASE WHEN r.resolution = 'raw' THEN "
        + d.bucket.format(pos='"end"', step=step)
        + " ELSE "
        + d.bucket.format(pos="start", step=step)
        + " END"
    )
    shapes = _newest_bounds(deployment_id)
    sums: list[str] = []
    shape_params: list[Any] = []
    for field, le in shapes.items():
        same = d.same_bounds.format(field=field)
        for i in range(len(le)):
            sums.append(f"SUM(CASE WHEN {same} THEN {d.count.format(field=field, i=i)} ELSE 0 END)")
            shape_params.append(json.dumps(le))
    extra = "".join(", " + column for column in sums)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT r.variant_id, {bucket} AS b, SUM(r.requests), COUNT(*),"  # noqa: S608
            f" SUM(r.queue_depth), COUNT(DISTINCT COALESCE(r.worker_id, 0)){extra}"
            f" FROM {TABLE} r WHERE {where} GROUP BY r.variant_id, b",
            shape_params + params,
        )
        scalars: dict[tuple[int, int], dict[str, float]] = {}
        latency: dict[tuple[int, int], dict[str, Any]] = {}
        batch: dict[int, dict[str, Any]] = {}
        for v, b, req, rows, q, workers, *counts in cursor.fetchall():
            key = (v, int(b))
            scalars[key] = {
                "requests": float(req or 0),
                "queue_depth": float(q or 0) * workers / rows,
                "replicas": float(workers),
            }
            offset = 0
            for field, le in shapes.items():
                part = [int(c or 0) for c in counts[offset : offset + len(le)]]
                offset += len(le)
                if field == "latency_histogram":
                    latency[key] = {"le": le, "counts": part}
                else:
                    batch[v] = histograms.merge([batch.get(v, {}), {"le": le, "counts": part}])
        cursor.execute(
            f"SELECT r.variant_id, {bucket} AS b, o.key, SUM({d.outcome_value})"  # noqa: S608
            f" FROM {TABLE} r {d.outcomes} WHERE {where} GROUP BY r.variant_id, b, o.key",
            params,
        )
        outcomes: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        for v, b, key, value in cursor.fetchall():
            outcomes[(v, int(b))][str(key)] = int(value or 0)
        gauges: list[Any] = []
        if worker_ids:
            cursor.execute(
                f"SELECT r.worker_id, {bucket} AS b, AVG(r.cpu_percent), AVG(r.rss_bytes),"  # noqa: S608
                " AVG(r.gpu_utilization), AVG(r.gpu_memory_bytes)"
                f" FROM {TABLE} r WHERE {where} AND r.worker_id IN ({', '.join(['%s'] * len(worker_ids))})"
                " GROUP BY r.worker_id, b",
                [*params, *worker_ids],
            )
            gauges = cursor.fetchall()
        workers = {
            (w, int(b)): {
                "cpu_percent": _f(cpu),
                "rss_bytes": _f(rss),
                "gpu_utilization": _f(gpu),
                "gpu_memory_bytes": _f(mem),
            }
            for w, b, cpu, rss, gpu, mem in gauges
        }
    return Aggregates(
        scalars=scalars,
        latency=latency,
        outcomes=dict(outcomes),
        batch=batch,
        workers=workers,
        last_end=newest,
    )


def _newest_bounds(deployment_id: int) -> dict[str, list[Any]]:
    """The latency and batch histogram bounds of the deployment's newest report (indexed reads)."""
    newest: dict[str, Any] = {}
    for tier in TIERS:
        row = (
            Report.objects.filter(deployment_id=deployment_id, resolution=tier.resolution)
            .order_by("-end")
            .values("latency_histogram", "batch_histogram")
            .first()
        )
        if row is not None:
            newest = dict(row)
            break
    shapes: dict[str, list[Any]] = {}
    for field in ("latency_histogram", "batch_histogram"):
        histogram = newest.get(field)
        le = histogram.get("le") if isinstance(histogram, dict) else None
        if isinstance(le, list) and 0 < len(le) <= MAX_BUCKETS:
            shapes[field] = le
    return shapes


def _f(value: Any) -> float | None:
    return None if value is None else float(value)
