"""Celery tasks of deployments: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from config.jobs import RETRYING_JOB, RowJobTask
from deployments.backends.base import BackendError
from deployments.webhooks.tasks import deliver_webhook_task as deliver_webhook_task
from deployments.webhooks.tasks import send_due_webhooks_task as send_due_webhooks_task

_BUILD_HARD_LIMIT = int(settings.KILN_IMAGE_BUILD_TIMEOUT_S) + 120

_RECONCILE_PASS = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "max_retries": 5,
    "soft_time_limit": 240,
    "time_limit": 300,
}
"""Options of a reconcile pass of one deployment (on demand or after a worker's exit)."""


@shared_task(name="deployments.reconcile_deployment", **_RECONCILE_PASS)
def reconcile_deployment_task(deployment_id: int) -> bool:
    from deployments.reconcile import reconcile_deployment

    return reconcile_deployment(deployment_id)


@shared_task(name="deployments.reconcile_after_exit", **_RECONCILE_PASS)
def reconcile_after_exit_task(deployment_id: int, follow_ups: int) -> bool:
    from deployments.reconcile.exits import reconcile_after_exit

    return reconcile_after_exit(deployment_id, follow_ups)


@shared_task(name="deployments.reconcile_all", acks_late=True, soft_time_limit=240, time_limit=300)
def reconcile_all_task() -> dict[str, int]:
    from deployments.reconcile import reconcile_all

    return reconcile_all()


@shared_task(name="deployments.autoscale", acks_late=True, soft_time_limit=20, time_limit=30)
def autoscale_task() -> dict[str, int]:
    from deployments.services.autoscaling import autoscale

    return autoscale()


@shared_task(name="deployments.downsample_reports", acks_late=True, time_limit=600)
def downsample_reports_task() -> dict[str, int]:
    from deployments.services import downsample_reports

    return downsample_reports()


@shared_task(name="deployments.prune_history", acks_late=True, time_limit=600)
def prune_history_task() -> dict[str, int]:
    from deployments.services.history import prune_history

    return prune_history()


@shared_task(name="deployments.publish_routing_table", acks_late=True, time_limit=60)
def publish_routing_table_task() -> int:
    from deployments.services import publish_routing_table

    return len(publish_routing_table().deployments)


@shared_task(name="deployments.advance_rollouts", acks_late=True, soft_time_limit=60, time_limit=90)
def advance_rollouts_task() -> dict[str, int]:
    from deployments.services.rollouts import advance_rollouts

    return advance_rollouts()


class _ImageBuildTask(RowJobTask):
    job = "image build job"

    def fail_row(self, row_id: int, attempt: str | None, reason: str) -> None:
        from deployments.services.images import fail_worker_image

        fail_worker_image(image_id=row_id, attempt=attempt, reason=reason, code="job_failed")


@shared_task(
    base=_ImageBuildTask,
    name="deployments.build_worker_image",
    **RETRYING_JOB,
    soft_time_limit=_BUILD_HARD_LIMIT - 60,
    time_limit=_BUILD_HARD_LIMIT,
)
def build_worker_image_task(image_id: int, attempt: str) -> str:
    from deployments.services.images import build_worker_image

    image = build_worker_image(image_id=image_id, attempt=attempt)
    return "skipped" if image is None else image.status


@shared_task(name="deployments.sweep_image_builds", acks_late=True, time_limit=120)
def sweep_image_builds_task() -> dict[str, int]:
    from deployments.services.images import sweep_image_builds

    return sweep_image_builds()


@shared_task(
    name="deployments.remove_worker_images",
    acks_late=True,
    autoretry_for=(BackendError, OperationalError, InterfaceError),
    retry_backoff=30,
    max_retries=5,
    time_limit=300,
)
def remove_worker_images_task(tags: list[str]) -> dict[str, str]:
    from deployments.services.image_cleanup import remove_worker_images

    return remove_worker_images(tags)


@shared_task(name="deployments.prune_worker_images", acks_late=True, time_limit=300)
def prune_worker_images_task() -> dict[str, int]:
    from deployments.services.image_cleanup import prune_superseded_images

    return prune_superseded_images()


_MEASURE_HARD_LIMIT = int(settings.KILN_ADVICE_MEASURE_TIMEOUT_S) + 60


class _MeasureTask(RowJobTask):
    job = "measurement job"

    def fail_row(self, row_id: int, attempt: str | None, reason: str) -> None:
        from deployments.services.measurements import fail_measurement

        fail_measurement(run_id=row_id, attempt=attempt, reason=reason)


@shared_task(
    base=_MeasureTask,
    name="deployments.measure_version",
    **RETRYING_JOB,
    soft_time_limit=_MEASURE_HARD_LIMIT - 30,
    time_limit=_MEASURE_HARD_LIMIT,
)
def measure_version_task(run_id: int, attempt: str) -> str:
    from deployments.services.measurements import measure_version

    run = measure_version(run_id=run_id, attempt=attempt)
    return "skipped" if run is None else run.status


@shared_task(name="deployments.sweep_measurements", acks_late=True, time_limit=120)
def sweep_measurements_task() -> dict[str, int]:
    from deployments.services.measurements import sweep_measurements

    return sweep_measurements()
