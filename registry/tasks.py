"""Celery tasks of the registry: thin wrappers that take ids and call one service."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

_CONVERT_HARD_LIMIT = int(settings.KILN_CONVERT_TIMEOUT_S) + 180


class _ConvertTask(Task):
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """When retries run out, the version fails with a readable reason instead of hanging."""
        from registry.services import fail_version

        version_id, attempt = ([*list(args), None, None])[:2]
        if version_id is not None:
            fail_version(
                version_id=int(version_id),
                attempt=attempt,
                reason=f"conversion job failed: {type(exc).__name__}: {exc}"[:2000],
                code="job_failed",
            )


@shared_task(
    base=_ConvertTask,
    name="registry.convert_version",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=5,
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
