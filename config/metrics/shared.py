"""Counters and histograms that every process adds to and any process exposes: kept in Redis.

Celery workers, beat and each gunicorn worker are separate processes; a
``prometheus_client.Counter`` in one of them is invisible to the web process
Prometheus scrapes. These live in Redis hashes instead (``HINCRBY``, atomic),
under ``<KILN_INSTANCE_ID>:metrics:<name>``, and the platform collector reads
them back at scrape time. One hash field per label set (per bucket for
histograms), so a scrape is one ``HGETALL`` per metric.

Recording never raises: a Redis outage costs a logged warning and the lost
increment, never a failed conversion or reconcile pass. A flushed Redis
restarts the counters at zero, which Prometheus treats as a counter reset.
"""

from __future__ import annotations

import json
import logging
import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis
from django.conf import settings

from config.redis import redis_client

logger = logging.getLogger(__name__)

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,128}$")


METRICS_REDIS_TIMEOUT_S = 2.0
"""Shorter than other Redis calls: recording a metric or answering a scrape must never wait long."""


def clean_label(value: object) -> str:
    """A label value safe to store and expose: bounded charset and length, ``other`` otherwise."""
    text = str(value)
    return text if _LABEL_VALUE.match(text) else "other"


def _field(values: Sequence[str]) -> str:
    return json.dumps([clean_label(v) for v in values], separators=(",", ":"))


def _values(field: bytes | str, arity: int) -> tuple[str, ...] | None:
    try:
        values = json.loads(field)
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != arity:
        return None
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class SharedCounter:
    """A monotonic counter with fixed label names; ``name`` is exposed with ``_total`` appended."""

    name: str
    documentation: str
    labels: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{settings.KILN_INSTANCE_ID}:metrics:{self.name}"

    def inc(self, *values: str, amount: int = 1) -> None:
        if len(values) != len(self.labels):
            msg = f"{self.name} takes labels {self.labels}, got {values}"
            raise ValueError(msg)
        try:
            redis_client(timeout_s=METRICS_REDIS_TIMEOUT_S).hincrby(self.key, _field(values), amount)
        except redis.RedisError as exc:
            logger.warning("metric %s not recorded: %s", self.name, exc)

    def read(self, client: redis.Redis) -> dict[tuple[str, ...], float]:
        raw: dict[bytes, bytes] = client.hgetall(self.key)  # type: ignore[assignment]
        out: dict[tuple[str, ...], float] = {}
        for field, value in raw.items():
            labels = _values(field, len(self.labels))
            if labels is not None:
                out[labels] = float(value)
        return out


@dataclass(frozen=True)
class HistogramValue:
    """Cumulative ``(upper bound, count)`` pairs ending with +Inf, and the sum."""

    buckets: list[tuple[float, float]]
    total: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1]


@dataclass(frozen=True)
class SharedHistogram:
    """A histogram with fixed label names and buckets (base unit: seconds).

    Fields are ``[labels...]|<bucket index>`` (per-bucket, not cumulative: one
    ``HINCRBY`` per observation) and ``[labels...]|sum``, written in one
    MULTI/EXEC so a scrape never sees a count without its sum.
    """

    name: str
    documentation: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]

    @property
    def key(self) -> str:
        return f"{settings.KILN_INSTANCE_ID}:metrics:{self.name}"

    def observe(self, value: float, *values: str) -> None:
        if len(values) != len(self.labels):
            msg = f"{self.name} takes labels {self.labels}, got {values}"
            raise ValueError(msg)
        if not math.isfinite(value) or value < 0:
            logger.warning("metric %s: ignoring observation %r", self.name, value)
            return
        labels = _field(values)
        try:
            pipe = redis_client(timeout_s=METRICS_REDIS_TIMEOUT_S).pipeline(transaction=True)
            pipe.hincrby(self.key, f"{labels}|{bisect_left(self.bounds, value)}", 1)
            pipe.hincrbyfloat(self.key, f"{labels}|sum", value)
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("metric %s not recorded: %s", self.name, exc)

    def read(self, client: redis.Redis) -> dict[tuple[str, ...], HistogramValue]:
        raw: dict[bytes, bytes] = client.hgetall(self.key)  # type: ignore[assignment]
        per_bucket: dict[tuple[str, ...], list[float]] = {}
        sums: dict[tuple[str, ...], float] = {}
        for field, value in raw.items():
            labels_part, _, suffix = field.decode().rpartition("|")
            labels = _values(labels_part, len(self.labels))
            if labels is None:
                continue
            counts = per_bucket.setdefault(labels, [0.0] * (len(self.bounds) + 1))
            if suffix == "sum":
                sums[labels] = float(value)
            elif suffix.isdigit() and int(suffix) <= len(self.bounds):
                counts[int(suffix)] = float(value)
        return {
            labels: self._cumulative(counts, sums.get(labels, 0.0)) for labels, counts in per_bucket.items()
        }

    def empty(self) -> HistogramValue:
        return self._cumulative([0.0] * (len(self.bounds) + 1), 0.0)

    def _cumulative(self, counts: Iterable[float], total: float) -> HistogramValue:
        running, buckets = 0.0, []
        for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return HistogramValue(buckets, total)
