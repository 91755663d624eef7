"""Celery tasks of the registry: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from config.jobs import RETRYING_JOB, RowJobTask

_CONVERT_HARD_LIMIT = int(settings.KILN_CONVERT_TIMEOUT_S) + 180


class _ConvertTask(RowJobTask):
    job = "conversion job"

    def fail_row(self, row_id: int, attempt: str | None, reason: str) -> None:
        from registry.services import fail_version

        fail_version(version_id=row_id, attempt=attempt, reason=reason, code="job_failed")


@shared_task(
    base=_ConvertTask,
    name="registry.convert_version",
    **RETRYING_JOB,
    soft_time_limit=_CONVERT_HARD_LIMIT - 60,
    time_limit=_CONVERT_HARD_LIMIT,
)
def convert_version_task(version_id: int, attempt: str) -> str:
    from registry.services import convert_version

    version = convert_version(version_id=version_id, attempt=attempt)
    return "skipped" if version is None else version.status


@shared_task(name="registry.sweep_stale_conversions", acks_late=True, time_limit=300)
def sweep_stale_conversions_task() -> dict[str, int]:
    from registry.services import sweep_stale_conversions

    return sweep_stale_conversions()
