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

from deployments.models import Report
from deployments.services.rollups import TIER, TIERS, watermark

TABLE = Report._meta.db_table


@dataclass(frozen=True)
class Dialect:
    bucket: str  # {pos}, {step}
    counts: str  # FROM clause addition unnesting latency or batch histogram counts: {field}
    count_index: str
    count_value: str
    bounds: str  # the histogram's bounds as text: {field}
    outcomes: str
    outcome_key: str
    outcome_value: str


POSTGRES = Dialect(
    bucket="(FLOOR(EXTRACT(EPOCH FROM r.{pos}) / {step}) * {step})::bigint",
    counts=(
        "CROSS JOIN LATERAL jsonb_array_elements_text(r.{field} -> 'counts') WITH ORDINALITY AS h(value, ord)"
    ),
    count_index="h.ord - 1",
    count_value="h.value::bigint",
    bounds="(r.{field} -> 'le')::text",
    outcomes="CROSS JOIN LATERAL jsonb_each_text(r.outcomes) AS o(key, value)",
    outcome_key="o.key",
    outcome_value="o.value::bigint",
)
SQLITE = Dialect(
    bucket="(CAST(strftime('%%s', r.{pos}) AS INTEGER) / {step}) * {step}",
    counts=", json_each(r.{field}, '$.counts') AS h",
    count_index="h.key",
    count_value="CAST(h.value AS INTEGER)",
    bounds="json_extract(r.{field}, '$.le')",
    outcomes=", json_each(r.outcomes) AS o",
    outcome_key="o.key",
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


def aggregate(deployment_id: int, resolution: str, step: int, first: datetime) -> Aggregates:
    """Run the five aggregations of one deployment's series (one query each)."""
    d = _dialect()
    where, params, newest = tier_conditions(deployment_id, resolution, first)
    bucket = (
        "CASE WHEN r.resolution = 'raw' THEN "
        + d.bucket.format(pos='"end"', step=step)
        + " ELSE "
        + d.bucket.format(pos="start", step=step)
        + " END"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT r.variant_id, {bucket} AS b, SUM(r.requests), COUNT(*),"  # noqa: S608
            " SUM(r.queue_depth), COUNT(DISTINCT COALESCE(r.worker_id, 0))"
            f" FROM {TABLE} r WHERE {where} GROUP BY r.variant_id, b",
            params,
        )
        scalars = {
            (v, int(b)): {"requests": float(req or 0), "queue_depth": float(q or 0) * workers / rows}
            for v, b, req, rows, q, workers in cursor.fetchall()
        }
        latency = _histograms(cursor, d, "latency_histogram", bucket, where, params)
        batch_rows = _histograms(cursor, d, "batch_histogram", "0", where, params)
        cursor.execute(
            f"SELECT r.variant_id, {bucket} AS b, {d.outcome_key}, SUM({d.outcome_value})"  # noqa: S608
            f" FROM {TABLE} r {d.outcomes} WHERE {where} GROUP BY r.variant_id, b, {d.outcome_key}",
            params,
        )
        outcomes: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
        for v, b, key, value in cursor.fetchall():
            outcomes[(v, int(b))][str(key)] = int(value or 0)
        cursor.execute(
            f"SELECT r.worker_id, {bucket} AS b, AVG(r.cpu_percent), AVG(r.rss_bytes),"  # noqa: S608
            " AVG(r.gpu_utilization), AVG(r.gpu_memory_bytes)"
            f" FROM {TABLE} r WHERE {where} AND r.worker_id IS NOT NULL GROUP BY r.worker_id, b",
            params,
        )
        workers = {
            (w, int(b)): {
                "cpu_percent": _f(cpu),
                "rss_bytes": _f(rss),
                "gpu_utilization": _f(gpu),
                "gpu_memory_bytes": _f(mem),
            }
            for w, b, cpu, rss, gpu, mem in cursor.fetchall()
        }
    return Aggregates(
        scalars=scalars,
        latency=latency,
        outcomes=dict(outcomes),
        batch={variant: histogram for (variant, _), histogram in batch_rows.items()},
        workers=workers,
        last_end=newest,
    )


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


def _histograms(
    cursor: Any, d: Dialect, field: str, bucket: str, where: str, params: list[Any]
) -> dict[tuple[int, int], dict[str, Any]]:
    """Summed bucket counts per (variant, bucket); other bounds than the first found are left out."""
    bounds = d.bounds.format(field=field)
    cursor.execute(
        f"SELECT r.variant_id, {bucket} AS b, {bounds} AS le, {d.count_index} AS i,"  # noqa: S608
        f" SUM({d.count_value}) FROM {TABLE} r {d.counts.format(field=field)}"
        f" WHERE {where} GROUP BY r.variant_id, b, le, i",
        params,
    )
    out: dict[tuple[int, int], dict[str, Any]] = {}
    counts: dict[tuple[int, int, str], dict[int, int]] = defaultdict(dict)
    for v, b, le, i, total in cursor.fetchall():
        counts[(v, int(b), str(le))][int(i)] = int(total or 0)
    for (v, b, le), by_index in counts.items():
        key = (v, b)
        if key in out:
            continue  # mixed bounds in one bucket: the first set wins, as histograms.merge does
        out[key] = {"le": json.loads(le), "counts": [by_index.get(i, 0) for i in range(max(by_index) + 1)]}
    return out
