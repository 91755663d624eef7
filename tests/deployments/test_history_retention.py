"""Stopped workers (and their log files), the autoscaler's decisions and ended webhook deliveries
leave the database once older than the history retention; live rows, young rows and reports stay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from deployments.autoscaling.models import ScalingDecision
from deployments.models import Deployment, Report, Variant, Worker
from deployments.services import history
from deployments.services.history import prune_history
from deployments.webhooks.models import Webhook, WebhookDelivery
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db

OLD = timedelta(days=31)
YOUNG = timedelta(days=29)


@pytest.fixture
def variant(owner: User) -> Variant:
    version = ready_version(owner, model="history")
    deployment = Deployment.objects.create(name="history", model=version.model, created_by=owner)
    return Variant.objects.create(deployment=deployment, name="a", version=version, backend="process")


def _worker(variant: Variant, state: str, age: timedelta, log: Path | None = None) -> Worker:
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("--- starting worker\n")
    return Worker.objects.create(
        variant=variant,
        version=variant.version,
        backend="process",
        state=state,
        state_changed_at=timezone.now() - age,
        log_path=str(log or ""),
    )


def _aged(model: Any, age: timedelta, **fields: Any) -> Any:
    row = model.objects.create(**fields)
    model.objects.filter(pk=row.pk).update(created_at=timezone.now() - age)
    return row


def test_history_older_than_the_retention_goes_and_the_rest_stays(
    variant: Variant, owner: User, settings: Any, tmp_path: Path
) -> None:
    settings.VAR_DIR = tmp_path
    settings.KILN_HISTORY_RETENTION_DAYS = 30
    logs = tmp_path / "workers"
    old_stopped = _worker(variant, "stopped", OLD, logs / "worker-1.log")
    old_gone = _worker(variant, "stopped", OLD, logs / "worker-2.log")
    outside = tmp_path / "elsewhere.log"  # a path the backends never write: never removed
    outside.write_text("not a worker log")
    old_odd = _worker(variant, "stopped", OLD)
    Worker.objects.filter(pk=old_odd.pk).update(log_path=str(outside))
    kept = [
        _worker(variant, "stopped", YOUNG, logs / "worker-3.log"),
        _worker(variant, "ready", OLD, logs / "worker-4.log"),  # live however old
        _worker(variant, "draining", OLD),
        _worker(variant, "failed", OLD),  # the mark of its configuration's crash loop
    ]
    now = timezone.now()
    report = Report.objects.create(
        worker=old_stopped,
        variant=variant,
        deployment=variant.deployment,
        version_number=1,
        resolution="hour",
        start=now - timedelta(hours=1),
        end=now,
        seconds=3600,
        requests=10,
    )
    decision = {"variant": variant, "from_replicas": 1, "to_replicas": 2, "reason": "load_up"}
    old_decision = _aged(ScalingDecision, OLD, short_load=2.0, long_load=1.0, **decision)
    young_decision = _aged(ScalingDecision, YOUNG, short_load=2.0, long_load=1.0, **decision)
    hook = Webhook.objects.create(url="https://example.com/hook", secret="s" * 32, created_by=owner)
    delivered = _aged(WebhookDelivery, OLD, webhook=hook, event_type="x", body="{}", status="delivered")
    failed = _aged(WebhookDelivery, OLD, webhook=hook, event_type="x", body="{}", status="failed")
    pending = _aged(WebhookDelivery, OLD, webhook=hook, event_type="x", body="{}", status="pending")
    young = _aged(WebhookDelivery, YOUNG, webhook=hook, event_type="x", body="{}", status="delivered")

    counts = prune_history()

    assert counts == {"workers": 3, "worker_logs": 2, "scaling_decisions": 1, "webhook_deliveries": 2}
    assert not Worker.objects.filter(pk__in=[old_stopped.pk, old_gone.pk, old_odd.pk]).exists()
    assert set(Worker.objects.values_list("pk", flat=True)) == {w.pk for w in kept}
    assert sorted(p.name for p in logs.iterdir()) == ["worker-3.log", "worker-4.log"]
    assert outside.exists()
    report.refresh_from_db()
    assert report.worker is None  # the worker's reports stay, without it
    assert report.requests == 10
    assert set(ScalingDecision.objects.values_list("pk", flat=True)) == {young_decision.pk}
    assert not ScalingDecision.objects.filter(pk=old_decision.pk).exists()
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {pending.pk, young.pk}
    assert not WebhookDelivery.objects.filter(pk__in=[delivered.pk, failed.pk]).exists()
    assert prune_history() == dict.fromkeys(counts, 0)


def test_a_backlog_goes_in_bounded_batches_over_passes_and_zero_keeps_history_for_ever(
    variant: Variant, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.KILN_HISTORY_RETENTION_DAYS = 0
    for _ in range(7):
        _worker(variant, "stopped", timedelta(days=3650))
    assert prune_history()["workers"] == 0

    settings.KILN_HISTORY_RETENTION_DAYS = 30
    monkeypatch.setattr(history, "HISTORY_BATCH", 2)
    monkeypatch.setattr(history, "HISTORY_BATCHES", 2)

    assert [prune_history()["workers"] for _ in range(3)] == [4, 3, 0]
    assert not Worker.objects.exists()
