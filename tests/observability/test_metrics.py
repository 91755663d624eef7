"""The control plane's /metrics: what a scrape shows after real actions.

Counters that other processes add to (Celery workers, the reconcile loop) live
in Redis under this test's own instance id, so parallel test runs never mix.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery.signals import task_failure, task_retry, task_success
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from config.metrics.events import record_image_build
from deployments.models import Deployment, Variant, Worker
from deployments.reconcile import spec_hash
from registry import storage
from registry.models import ModelVersion, RegisteredModel
from registry.services import convert_version, fail_version, sweep_stale_conversions
from registry.tasks import convert_version_task, sweep_stale_conversions_task
from tests.support import onnx_models
from tests.support.deployments import ready_workers
from tests.support.gunicorn import gunicorn as run_gunicorn
from tests.support.polling import wait_for
from tests.support.services import CeleryWorker, Platform, database_url_for_children
from tests.support.versions import ready_version, stored_version

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return _parse(response.content.decode())


def _parse(text: str) -> Samples:
    """Every sample of an exposition, each series exactly once."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample named ``name`` with exactly ``labels``; None when absent."""
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(autouse=True)
def metrics_instance(settings: Any) -> Iterator[str]:
    """A private instance id: this test's shared counters (and routing key) start empty, go after."""
    instance = f"kiln-test-metrics-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    settings.KILN_INSTANCE_ID = instance
    yield instance
    keys = list(client.scan_iter(f"{instance}:*"))
    if keys:
        client.delete(*keys)


@pytest.mark.django_db
def test_a_scrape_counts_model_versions_in_each_state(owner: User) -> None:
    for number, status in enumerate(["registered", "converting", "ready", "ready", "failed"], start=1):
        ready_version(owner, number=number, status=status)

    samples = scrape()

    assert value(samples, "kiln_model_versions", state="registered") == 1
    assert value(samples, "kiln_model_versions", state="converting") == 1
    assert value(samples, "kiln_model_versions", state="ready") == 2
    assert value(samples, "kiln_model_versions", state="failed") == 1


def _deployment(owner: User, name: str, status: str, *, running: bool = True) -> Deployment:
    version = ModelVersion.objects.filter(model__name="cnn").first() or ready_version(owner)
    return Deployment.objects.create(
        name=name, model=version.model, status=status, desired_running=running, created_by=owner
    )


def _variant(deployment: Deployment, name: str, **fields: Any) -> Variant:
    version = ModelVersion.objects.get(model=deployment.model, version=1)
    return Variant.objects.create(deployment=deployment, name=name, version=version, **fields)


def _worker(variant: Variant, state: str, *, spec: str | None = None, restarts: int = 0) -> Worker:
    return Worker.objects.create(
        variant=variant,
        version=variant.version,
        backend="process",
        state=state,
        spec_hash=spec_hash(variant) if spec is None else spec,
        restarts=restarts,
    )


@pytest.mark.django_db
def test_a_scrape_shows_deployments_by_status_and_each_deployments_status(owner: User) -> None:
    _deployment(owner, "fraud", "serving")
    _deployment(owner, "search", "serving")
    _deployment(owner, "ranker", "degraded")
    _deployment(owner, "old", "stopped", running=False)

    samples = scrape()

    assert value(samples, "kiln_deployments", status="serving") == 2
    assert value(samples, "kiln_deployments", status="degraded") == 1
    assert value(samples, "kiln_deployments", status="stopped") == 1
    assert value(samples, "kiln_deployments", status="failed") == 0
    assert value(samples, "kiln_deployment_status", deployment="ranker", status="degraded") == 1
    assert value(samples, "kiln_deployment_status", deployment="ranker", status="serving") == 0


@pytest.mark.django_db
def test_a_scrape_shows_workers_by_state_and_each_variants_desired_replicas_weight_and_queue_size(
    owner: User,
) -> None:
    fraud = _deployment(owner, "fraud", "degraded")
    stopped = _deployment(owner, "old", "stopped", running=False)
    primary = _variant(fraud, "primary", replicas=3, weight=90, max_queue_size=256)
    canary = _variant(fraud, "canary", replicas=1, weight=10, shadow_percent=25)
    idle = _variant(stopped, "primary", replicas=2)
    for state in ("ready", "ready", "starting", "stopped", "stopped"):
        _worker(primary, state)
    _worker(canary, "unhealthy", restarts=2)
    _worker(canary, "failed")  # crash loop on the current configuration: counts
    _worker(canary, "failed", spec="an-older-configuration")  # history: does not
    _worker(idle, "draining")

    samples = scrape()

    def workers(deployment: str, variant: str, state: str) -> float | None:
        return value(samples, "kiln_workers", deployment=deployment, variant=variant, state=state)

    assert workers("fraud", "primary", "ready") == 2
    assert workers("fraud", "primary", "starting") == 1
    assert workers("fraud", "primary", "unhealthy") == 0
    assert value(samples, "kiln_workers", deployment="fraud", variant="primary", state="stopped") is None
    assert workers("fraud", "canary", "unhealthy") == 1
    assert workers("fraud", "canary", "failed") == 1
    assert workers("old", "primary", "draining") == 1
    assert value(samples, "kiln_variant_replicas_desired", deployment="fraud", variant="primary") == 3
    assert value(samples, "kiln_variant_replicas_desired", deployment="old", variant="primary") == 0
    assert value(samples, "kiln_variant_traffic_weight_ratio", deployment="fraud", variant="canary") == 0.1
    assert value(samples, "kiln_variant_shadow_ratio", deployment="fraud", variant="canary") == 0.25
    assert value(samples, "kiln_variant_max_queue_size", deployment="fraud", variant="primary") == 256
    info = {"deployment": "fraud", "variant": "canary", "model": "cnn", "version": "1"}
    assert value(samples, "kiln_variant_info", **info, backend="process", device="cpu") == 1


@pytest.mark.django_db
def test_celery_task_outcomes_are_counted_by_task_and_outcome_from_the_signal_handlers() -> None:
    for _ in range(3):
        task_success.send(sender=sweep_stale_conversions_task, result={})
    task_failure.send(sender=convert_version_task, task_id="t1", exception=RuntimeError("boom"))
    task_retry.send(sender=convert_version_task, request=None, reason="db down", einfo=None)
    task_retry.send(sender=convert_version_task, request=None, reason="db down", einfo=None)

    samples = scrape()

    def tasks(task: str, outcome: str) -> float | None:
        return value(samples, "kiln_celery_tasks_total", task=task, outcome=outcome)

    assert tasks("registry.sweep_stale_conversions", "success") == 3
    assert tasks("registry.convert_version", "failure") == 1
    assert tasks("registry.convert_version", "retry") == 2
    assert tasks("registry.convert_version", "success") is None


@pytest.fixture
def worker_sharing_counters(metrics_instance: str, celery_worker: CeleryWorker) -> CeleryWorker:
    """The real Celery worker, restarted with this test's instance id (where it keeps its counts)."""
    celery_worker.stop()
    celery_worker.env["KILN_INSTANCE_ID"] = metrics_instance
    celery_worker.start()
    return celery_worker


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_tasks_a_separate_celery_worker_process_runs_show_in_the_web_process_scrape(
    worker_sharing_counters: CeleryWorker,
) -> None:
    for _ in range(2):
        sweep_stale_conversions_task.delay()

    wait_for(
        lambda: (
            value(
                scrape(),
                "kiln_celery_tasks_total",
                task="registry.sweep_stale_conversions",
                outcome="success",
            )
            == 2
        ),
        timeout=60,
        interval=0.5,
        message="two task successes in the scrape",
    )


@pytest.mark.django_db
def test_celery_queue_lengths_count_waiting_messages_of_every_priority_in_each_queue() -> None:
    queue, long_queue = settings.CELERY_TASK_DEFAULT_QUEUE, settings.KILN_CELERY_LONG_QUEUE
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    # No worker consumes these queues during this test; the messages are removed afterwards.
    keys = [queue, long_queue, *(f"{q}\x06\x16{p}" for q in (queue, long_queue) for p in (3, 6, 9))]
    broker.delete(*keys)
    try:
        sweep_stale_conversions_task.delay()
        sweep_stale_conversions_task.apply_async(priority=6)
        sweep_stale_conversions_task.apply_async(priority=9)
        sweep_stale_conversions_task.apply_async(queue=long_queue)

        samples = scrape()
    finally:
        broker.delete(*keys)

    assert value(samples, "kiln_celery_queue_length", queue=queue) == 3
    assert value(samples, "kiln_celery_queue_length", queue=long_queue) == 1


def _converting_version(owner: User, *, started_s_ago: float, tries: int = 1) -> ModelVersion:
    now = timezone.now()
    registered, _ = RegisteredModel.objects.get_or_create(name="slow", defaults={"owner": owner})
    registered.latest_version += 1
    registered.save()
    return ModelVersion.objects.create(
        model=registered,
        version=registered.latest_version,
        source_format="onnx",
        source_sha256="0" * 64,
        source_size=1,
        source_path="sha256/00/" + "0" * 64,
        created_by=owner,
        status="converting",
        conversion_attempt=uuid.uuid4(),
        conversion_tries=tries,
        conversion_started_at=now - timedelta(seconds=started_s_ago),
        conversion_heartbeat_at=now,
        progress="profiling batch 8",
    )


@pytest.mark.django_db
def test_failed_conversions_are_counted_by_reason_with_their_duration(
    owner: User, settings: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    settings.KILN_CONVERT_STALE_AFTER_S = 1800.0
    parity = _converting_version(owner, started_s_ago=42)
    _converting_version(owner, started_s_ago=2000)  # past KILN_CONVERT_STALE_AFTER_S: the sweep fails it

    with django_capture_on_commit_callbacks(execute=True):
        fail_version(
            version_id=parity.pk,
            attempt=str(parity.conversion_attempt),
            reason="parity error 0.3 above tolerance",
            code="parity_failed",
        )
        assert sweep_stale_conversions()["failed"] == 1

    samples = scrape()

    assert value(samples, "kiln_conversion_failures_total", reason="parity_failed") == 1
    assert value(samples, "kiln_conversion_failures_total", reason="timeout") == 1
    assert value(samples, "kiln_conversion_duration_seconds_count", outcome="failed") == 2
    assert value(samples, "kiln_conversion_duration_seconds_bucket", outcome="failed", le="30.0") == 0
    assert value(samples, "kiln_conversion_duration_seconds_bucket", outcome="failed", le="60.0") == 1
    assert value(samples, "kiln_conversion_duration_seconds_bucket", outcome="failed", le="1800.0") == 1
    assert value(samples, "kiln_conversion_duration_seconds_bucket", outcome="failed", le="+Inf") == 2
    total = value(samples, "kiln_conversion_duration_seconds_sum", outcome="failed")
    assert total is not None
    assert 2042 <= total < 2050
    assert value(samples, "kiln_conversion_duration_seconds_count", outcome="ready") == 0


@pytest.mark.django_db
def test_a_real_conversion_that_ends_ready_is_counted_with_its_duration(
    owner: User, settings: Any, tmp_path: Path, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    settings.KILN_PROFILE_MAX_BATCH = 4
    relative, digest, size, _ = storage.store_path(onnx_models.mlp(tmp_path / "mlp.onnx"))
    registered = RegisteredModel.objects.create(name="mlp", owner=owner, latest_version=1)
    version = ModelVersion.objects.create(
        model=registered,
        version=1,
        source_format="onnx",
        source_sha256=digest,
        source_size=size,
        source_path=relative,
        signature={"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}], "outputs": []},
        created_by=owner,
        conversion_attempt=uuid.uuid4(),
    )

    with django_capture_on_commit_callbacks(execute=True):
        converted = convert_version(version_id=version.pk, attempt=str(version.conversion_attempt))

    assert converted is not None
    assert converted.status == "ready", converted.status_reason
    samples = scrape()
    assert value(samples, "kiln_conversion_duration_seconds_count", outcome="ready") == 1
    total = value(samples, "kiln_conversion_duration_seconds_sum", outcome="ready")
    assert total is not None
    assert converted.conversion_started_at
    assert converted.conversion_finished_at
    elapsed = (converted.conversion_finished_at - converted.conversion_started_at).total_seconds()
    assert total == pytest.approx(elapsed)
    assert value(samples, "kiln_model_versions", state="ready") == 1


@pytest.mark.django_db
def test_image_builds_are_exposed_at_zero_until_a_build_reports_then_counted() -> None:
    before = scrape()
    assert value(before, "kiln_image_build_duration_seconds_count", outcome="succeeded") == 0
    assert value(before, "kiln_image_build_duration_seconds_count", outcome="failed") == 0

    record_image_build(outcome="succeeded", duration_s=95.0)
    record_image_build(outcome="failed", duration_s=12.0, reason="base_image_missing")

    after = scrape()
    assert value(after, "kiln_image_build_duration_seconds_bucket", outcome="succeeded", le="120.0") == 1
    assert value(after, "kiln_image_build_duration_seconds_bucket", outcome="succeeded", le="60.0") == 0
    assert value(after, "kiln_image_build_failures_total", reason="base_image_missing") == 1


@pytest.mark.django_db
def test_ended_image_builds_are_counted_with_their_duration_and_the_cause_of_a_failure(
    owner: User, settings: Any
) -> None:
    from datetime import timedelta

    from deployments.models import WorkerImage
    from deployments.services import images

    settings.KILN_DOCKER_GPU_BASE_IMAGE = "nvidia/cuda:12-runtime"
    version = ready_version(owner)
    built = images.ensure_worker_image(version=version, flavour="cpu")
    broken = images.ensure_worker_image(version=version, flavour="gpu")
    for image in (built, broken):
        assert images._claim(image.pk, str(image.attempt)) is not None  # what the build job does first
    WorkerImage.objects.filter(pk=built.pk).update(started_at=timezone.now() - timedelta(seconds=95))

    images._mark_ready(
        WorkerImage.objects.get(pk=built.pk), image_id="sha256:" + "b" * 64, reused=False, log=""
    )
    images.fail_worker_image(
        image_id=broken.pk, attempt=str(broken.attempt), reason="no space left", code="build_error"
    )

    samples = scrape()
    assert value(samples, "kiln_image_build_duration_seconds_bucket", outcome="succeeded", le="120.0") == 1
    assert value(samples, "kiln_image_build_duration_seconds_bucket", outcome="succeeded", le="60.0") == 0
    assert value(samples, "kiln_image_build_duration_seconds_count", outcome="failed") == 1
    assert value(samples, "kiln_image_build_failures_total", reason="build_error") == 1
    assert value(samples, "kiln_worker_images", state="ready") == 1
    assert value(samples, "kiln_worker_images", state="failed") == 1


@pytest.mark.django_db
def test_label_values_are_bounded_so_free_text_never_becomes_a_series() -> None:
    record_image_build(outcome="failed", duration_s=None, reason="could not pull 'nvidia/cuda': 429\nretry")

    samples = scrape()

    assert value(samples, "kiln_image_build_failures_total", reason="other") == 1


@pytest.mark.django_db
def test_the_scrape_stays_up_and_names_the_source_it_could_not_read(owner: User, settings: Any) -> None:
    ready_version(owner)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    record_image_build(outcome="failed", duration_s=1.0)  # lost, but never raises
    samples = scrape()

    assert value(samples, "kiln_metrics_source_up", source="database") == 1
    assert value(samples, "kiln_metrics_source_up", source="redis") == 0
    assert value(samples, "kiln_metrics_source_up", source="broker") == 0
    assert value(samples, "kiln_model_versions", state="ready") == 1
    assert value(samples, "kiln_conversion_duration_seconds_count", outcome="ready") is None


@pytest.fixture
def platform_counters(platform: Platform) -> Iterator[Platform]:
    """The real platform (web, Celery worker, beat); its shared counters are removed afterwards."""
    instance = settings.KILN_INSTANCE_ID  # the platform's own, shared by this process and its workers
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield platform
    keys = list(client.scan_iter(f"{instance}:metrics:*"))
    if keys:
        client.delete(*keys)


def _reconcile_actions(action: str, deployment: str = "cnn-prod") -> float | None:
    labels = {"deployment": deployment, "variant": "primary", "action": action}
    return value(scrape(), "kiln_reconcile_actions_total", **labels)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_reconcile_actions_on_real_worker_processes_are_counted_per_deployment_and_variant(
    platform_counters: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path)
    created = owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 1}]},
        format="json",
    )
    assert created.status_code == 201, created.content
    (first,) = ready_workers(owner_api, 1)
    assert _reconcile_actions("started") == 1

    os.kill(int(Worker.objects.get(pk=first["id"]).handle.split(":")[0]), signal.SIGKILL)
    wait_for(lambda: _reconcile_actions("restarted") == 1, timeout=30, message="a counted restart")
    ready_workers(owner_api, 1)
    owner_api.post("/api/v1/deployments/cnn-prod/stop/")
    wait_for(lambda: _reconcile_actions("drained") == 1, timeout=30, message="a counted drain")

    samples = scrape()
    assert value(samples, "kiln_variant_replicas_desired", deployment="cnn-prod", variant="primary") == 0
    assert _reconcile_actions("started") == 1
    assert _reconcile_actions("failed") is None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_crash_loop_shows_as_restarts_then_a_failed_worker_and_deployment(
    platform_counters: Platform, owner: User, owner_api: APIClient, tmp_path: Path
) -> None:
    stored_version(owner, tmp_path, onnx_bytes=b"\x08\x07this is not a loadable onnx graph" * 10)
    owner_api.post(
        "/api/v1/deployments/",
        {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1, "replicas": 1}]},
        format="json",
    )

    wait_for(lambda: _reconcile_actions("failed") == 1, timeout=90, interval=0.5, message="a crash loop")

    samples = scrape()
    assert (
        value(
            samples,
            "kiln_reconcile_actions_total",
            deployment="cnn-prod",
            variant="primary",
            action="restarted",
        )
        == 2
    )
    assert value(samples, "kiln_workers", deployment="cnn-prod", variant="primary", state="failed") == 1
    wait_for(
        lambda: value(scrape(), "kiln_deployment_status", deployment="cnn-prod", status="failed") == 1,
        timeout=15,
        message="the deployment marked failed",
    )


@dataclass
class Gunicorn:
    url: str
    multiproc_dir: Path

    def worker_pids_with_files(self) -> set[str]:
        return {path.stem.rsplit("_", 1)[-1] for path in self.multiproc_dir.glob("counter_*.db")}


@pytest.fixture
def gunicorn(tmp_path: Path, metrics_instance: str) -> Iterator[Gunicorn]:
    """The web app under gunicorn with two worker processes, started the way ``make run`` does."""
    from deployments.management.commands.runstack import prometheus_multiprocess_env

    leftover = tmp_path / "prometheus-multiproc" / "counter_999999.db"
    leftover.parent.mkdir()
    leftover.write_bytes(b"an earlier run's file")  # would break (or inflate) every scrape if kept
    env = prometheus_multiprocess_env(tmp_path)
    assert not leftover.exists()
    env.update(DATABASE_URL=database_url_for_children(), KILN_INSTANCE_ID=metrics_instance)
    with run_gunicorn(tmp_path / "gunicorn.log", env) as url:
        yield Gunicorn(url, leftover.parent)


def _scrape_url(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text[:2000]
    return _parse(response.text)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_every_gunicorn_worker_reports_the_request_counts_of_all_workers_and_platform_series_once(
    gunicorn: Gunicorn, owner: User
) -> None:
    ready_version(owner)
    sent = 0

    def both_workers_answered() -> bool:
        nonlocal sent
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda _: httpx.get(f"{gunicorn.url}/healthz", timeout=10).status_code, range(16))
            )
        assert set(codes) == {200}
        sent += len(codes)
        return len(gunicorn.worker_pids_with_files()) >= 2

    wait_for(both_workers_answered, timeout=60, interval=0, message="requests answered by both workers")

    healthz = {"view": "healthz", "transport": "http", "method": "GET"}
    for _ in range(6):  # whichever worker answers the scrape reports every worker's requests
        samples = _scrape_url(gunicorn.url)
        assert value(samples, "django_http_requests_total_by_view_transport_method_total", **healthz) == sent
        assert value(samples, "kiln_model_versions", state="ready") == 1
        assert value(samples, "kiln_metrics_source_up", source="database") == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_gunicorn_keeps_an_idle_connection_open_longer_than_a_polling_client_pools_it(
    gunicorn: Gunicorn,
) -> None:
    """A client polling every few seconds reuses its pooled connection; the server must not close it first.

    httpx keeps an idle connection for 5 s: with gunicorn's default keep-alive of 2 s the server
    closed it under a client polling every 2 s, which then saw "server disconnected without
    sending a response".
    """
    host, port = gunicorn.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        sockets = []
        for attempt in range(3):
            if attempt:
                time.sleep(6)  # longer than httpx keeps an idle connection
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200
            assert not response.will_close
            response.read()
            sockets.append(conn.sock)
        assert all(sock is sockets[0] for sock in sockets), "the connection was not reused"
    finally:
        conn.close()
