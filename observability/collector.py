"""The platform's own Prometheus families, computed when /metrics is scraped.

State (versions, deployments, variants, workers) is read from the database,
which is the truth; event counts come from the shared Redis counters
(``events``); Celery queue lengths from the broker. Because everything is read
at scrape time, by the one process answering the scrape, nothing here is
summed across gunicorn workers, unlike prometheus_client's multiprocess files.

A source that cannot be read is left out of that scrape and reported by
``kiln_metrics_source_up{source}`` = 0; the scrape itself still succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from config.metrics import events
from config.metrics.shared import METRICS_REDIS_TIMEOUT_S, SharedCounter, SharedHistogram
from config.redis import redis_client

logger = logging.getLogger(__name__)

# kombu's Redis transport keeps one list per queue and priority step: "<queue>", "<queue>\x06\x163", ...
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
# Worker rows in these states are current; stopped ones are history, failed ones count when they
# run the variant's current configuration (a crash loop that still stands).
_WORKER_STATES = ("starting", "ready", "unhealthy", "draining", "failed")


class PlatformCollector(Collector):
    """Builds ``kiln_*`` families from the database, the shared counters and the broker."""

    def describe(self) -> list[Metric]:
        return []  # no names at registration: collect() must not touch the database at start-up

    def collect(self) -> Iterator[Metric]:
        up: dict[str, bool] = {}
        try:
            families = list(_database_families())
            up["database"] = True
        except DatabaseError as exc:
            logger.warning("metrics: database unavailable: %s", exc)
            families, up["database"] = [], False
        yield from families
        try:
            families = list(_event_families(redis_client(timeout_s=METRICS_REDIS_TIMEOUT_S)))
            up["redis"] = True
        except redis.RedisError as exc:
            logger.warning("metrics: Redis unavailable: %s", exc)
            families, up["redis"] = [], False
        yield from families
        try:
            families = list(_queue_families())
            up["broker"] = True
        except redis.RedisError as exc:
            logger.warning("metrics: broker unavailable: %s", exc)
            families, up["broker"] = [], False
        yield from families
        source_up = GaugeMetricFamily(
            "kiln_metrics_source_up",
            "Whether the platform could read this source for this scrape (database, redis, broker).",
            labels=["source"],
        )
        for source, ok in up.items():
            source_up.add_metric([source], 1.0 if ok else 0.0)
        yield source_up


def _database_families() -> Iterator[Metric]:
    from deployments.models import Deployment, DeploymentStatus, Variant, Worker
    from deployments.reconcile import spec_hash
    from registry.models import ModelVersion, VersionStatus

    versions = GaugeMetricFamily(
        "kiln_model_versions", "Model versions by lifecycle state.", labels=["state"]
    )
    by_state = dict(ModelVersion.objects.values_list("status").annotate(n=Count("id")).order_by())
    for state in VersionStatus.values:
        versions.add_metric([state], float(by_state.get(state, 0)))
    yield versions

    rows = list(Deployment.objects.values_list("name", "status").order_by("name"))
    deployments = GaugeMetricFamily("kiln_deployments", "Deployments by status.", labels=["status"])
    status = GaugeMetricFamily(
        "kiln_deployment_status",
        "1 for the status each deployment is in, 0 for the others.",
        labels=["deployment", "status"],
    )
    for value in DeploymentStatus.values:
        deployments.add_metric([value], float(sum(1 for _, s in rows if s == value)))
        for name, current in rows:
            status.add_metric([name, value], 1.0 if current == value else 0.0)
    yield deployments
    yield status

    variants = list(
        Variant.objects.select_related("deployment__model", "version", "autoscaling").order_by(
            "deployment__name", "name"
        )
    )
    current_spec = {variant.pk: spec_hash(variant) for variant in variants}
    counts: dict[tuple[int, str], int] = {}
    for variant_id, state, spec, n in (
        Worker.objects.exclude(state="stopped")
        .values_list("variant_id", "state", "spec_hash")
        .annotate(n=Count("id"))
        .order_by()
    ):
        if state != "failed" or spec == current_spec.get(variant_id):  # old crash loops are history
            counts[variant_id, state] = counts.get((variant_id, state), 0) + n
    yield from _variant_families(variants, counts)
    yield from _image_families()


def _variant_families(variants: list[Any], counts: dict[tuple[int, str], int]) -> Iterator[Metric]:
    """Per variant: what it serves, its targets, and its workers by state (``counts``)."""
    labels = ["deployment", "variant"]
    info = GaugeMetricFamily(
        "kiln_variant_info",
        "1 per variant, labelled with the model, version, backend and device it serves.",
        labels=[*labels, "model", "version", "backend", "device"],
    )
    desired = GaugeMetricFamily(
        "kiln_variant_replicas_desired", "Replicas the variant should run (0 when stopped).", labels=labels
    )
    most = GaugeMetricFamily(
        "kiln_variant_replicas_max",
        "The autoscaler's maximum for the variant (its fixed replica count without autoscaling).",
        labels=labels,
    )
    weight = GaugeMetricFamily(
        "kiln_variant_traffic_weight_ratio",
        "Share of live traffic routed to the variant (0-1).",
        labels=labels,
    )
    shadow = GaugeMetricFamily(
        "kiln_variant_shadow_ratio",
        "Share of requests copied to the variant as shadow traffic (0-1).",
        labels=labels,
    )
    queue = GaugeMetricFamily(
        "kiln_variant_max_queue_size",
        "Requests a worker of the variant queues before refusing new ones (503).",
        labels=labels,
    )
    workers = GaugeMetricFamily(
        "kiln_workers",
        "Workers by state (failed: those crash-looping on the current configuration).",
        labels=[*labels, "state"],
    )
    for variant in variants:
        names = [variant.deployment.name, variant.name]
        info.add_metric(
            [
                *names,
                variant.deployment.model.name,
                str(variant.version.version),
                variant.backend,
                variant.device,
            ],
            1.0,
        )
        desired.add_metric(names, float(variant.replicas if variant.deployment.desired_running else 0))
        policy = getattr(variant, "autoscaling", None)
        most.add_metric(names, float(policy.max_replicas if policy is not None else variant.replicas))
        weight.add_metric(names, variant.weight / 100.0)
        shadow.add_metric(names, variant.shadow_percent / 100.0)
        queue.add_metric(names, float(variant.max_queue_size))
        for state in _WORKER_STATES:
            workers.add_metric([*names, state], float(counts.get((variant.pk, state), 0)))
    yield from (info, desired, most, weight, shadow, queue, workers)


def _image_families() -> Iterator[Metric]:
    """Worker images by build state; build durations and failures come from ``events.record_image_build``."""
    from deployments.models import WorkerImage

    family = GaugeMetricFamily("kiln_worker_images", "Worker images by build state.", labels=["state"])
    for state, n in WorkerImage.objects.values_list("status").annotate(n=Count("pk")).order_by():
        family.add_metric([str(state)], float(n))
    yield family


def _event_families(client: redis.Redis) -> Iterator[Metric]:
    yield _histogram(events.CONVERSION_DURATION, client, seed=events.CONVERSION_OUTCOMES)
    yield _counter(events.CONVERSION_FAILURES, client)
    yield _histogram(events.IMAGE_BUILD_DURATION, client, seed=events.IMAGE_BUILD_OUTCOMES)
    yield _counter(events.IMAGE_BUILD_FAILURES, client)
    yield _counter(events.CELERY_TASKS, client)
    yield _counter(events.RECONCILE_ACTIONS_TOTAL, client)
    yield _counter(events.SCALING_DECISIONS_TOTAL, client)


def _counter(metric: SharedCounter, client: redis.Redis) -> CounterMetricFamily:
    family = CounterMetricFamily(metric.name, metric.documentation, labels=list(metric.labels))
    for labels, value in sorted(metric.read(client).items()):
        family.add_metric(list(labels), value)
    return family


def _histogram(
    metric: SharedHistogram, client: redis.Redis, *, seed: tuple[str, ...]
) -> HistogramMetricFamily:
    """A histogram family; each ``seed`` label value is exposed (at zero) before its first observation."""
    values = metric.read(client)
    for label in seed:
        values.setdefault((label,), metric.empty())
    family = HistogramMetricFamily(metric.name, metric.documentation, labels=list(metric.labels))
    for labels, value in sorted(values.items()):
        buckets = [
            ("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in value.buckets
        ]
        family.add_metric(list(labels), buckets, value.total)
    return family


def _queue_families() -> Iterator[Metric]:
    broker = str(settings.CELERY_BROKER_URL)
    if not broker.startswith(("redis://", "rediss://", "unix://")):
        return
    queues = sorted({settings.CELERY_TASK_DEFAULT_QUEUE, settings.KILN_CELERY_LONG_QUEUE})
    pipe = redis_client(broker, timeout_s=METRICS_REDIS_TIMEOUT_S).pipeline(transaction=False)
    for queue in queues:
        for step in _KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{queue}{_KOMBU_PRIORITY_SEP}{step}" if step else queue)
    lengths = pipe.execute()
    family = GaugeMetricFamily(
        "kiln_celery_queue_length", "Messages waiting in a Celery queue (all priorities).", labels=["queue"]
    )
    steps = len(_KOMBU_PRIORITY_STEPS)
    for index, queue in enumerate(queues):
        family.add_metric([queue], float(sum(lengths[index * steps : (index + 1) * steps])))
    yield family
