"""What the platform counts as it happens, in whichever process it happens (see ``shared``).

Services call the ``record_*`` functions; Celery's task signals are connected
in ``ObservabilityConfig.ready``. Each metric has a small, fixed label set:
names of tasks, deployments and variants, and short machine codes, never
free text.
"""

from __future__ import annotations

from typing import Any

from config.metrics.shared import SharedCounter, SharedHistogram

# Conversions take seconds to tens of minutes (KILN_CONVERT_TIMEOUT_S, retries).
CONVERSION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
# Image builds: a cached layer in seconds, a fresh CUDA base image in many minutes.
IMAGE_BUILD_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

CONVERSION_OUTCOMES = ("ready", "failed")
IMAGE_BUILD_OUTCOMES = ("succeeded", "failed")
TASK_OUTCOMES = ("success", "failure", "retry")
RECONCILE_ACTIONS = ("started", "restarted", "drained", "failed")

CONVERSION_DURATION = SharedHistogram(
    "kiln_conversion_duration_seconds",
    "Time from a conversion's first claim to its outcome (ready or failed), retries included.",
    ("outcome",),
    CONVERSION_BUCKETS,
)
CONVERSION_FAILURES = SharedCounter(
    "kiln_conversion_failures",
    "Conversions that ended failed, by error code (export_failed, parity_failed, timeout, ...).",
    ("reason",),
)
IMAGE_BUILD_DURATION = SharedHistogram(
    "kiln_image_build_duration_seconds",
    "Duration of worker image builds, by outcome.",
    ("outcome",),
    IMAGE_BUILD_BUCKETS,
)
IMAGE_BUILD_FAILURES = SharedCounter(
    "kiln_image_build_failures", "Worker image builds that failed, by error code.", ("reason",)
)
CELERY_TASKS = SharedCounter(
    "kiln_celery_tasks",
    "Celery task executions by task name and outcome (success, failure, retry).",
    ("task", "outcome"),
)
RECONCILE_ACTIONS_TOTAL = SharedCounter(
    "kiln_reconcile_actions",
    "Reconcile loop actions on workers: started, restarted (a replacement), drained, failed (crash loop).",
    ("deployment", "variant", "action"),
)

SCALING_DECISIONS_TOTAL = SharedCounter(
    "kiln_autoscaling_decisions",
    "Replica changes by the autoscaler, by reason (load_up, load_down, idle, activate, minimum, maximum).",
    ("deployment", "variant", "reason"),
)


def record_conversion(*, outcome: str, duration_s: float | None, reason: str = "") -> None:
    """A conversion ended: ``ready`` or ``failed`` (with its error code as ``reason``)."""
    if duration_s is not None:
        CONVERSION_DURATION.observe(duration_s, outcome)
    if outcome == "failed":
        CONVERSION_FAILURES.inc(reason or "failed")


def record_image_build(*, outcome: str, duration_s: float | None, reason: str = "") -> None:
    """A worker image build ended: ``succeeded`` or ``failed`` (with its short cause as ``reason``)."""
    if duration_s is not None:
        IMAGE_BUILD_DURATION.observe(duration_s, outcome)
    if outcome == "failed":
        IMAGE_BUILD_FAILURES.inc(reason or "failed")


def record_reconcile_action(*, deployment: str, variant: str, action: str) -> None:
    """The reconcile loop started, restarted, drained or failed a worker of ``deployment/variant``."""
    RECONCILE_ACTIONS_TOTAL.inc(deployment, variant, action)


def record_scaling_decision(*, deployment: str, variant: str, reason: str) -> None:
    """The autoscaler changed the replicas of ``deployment/variant`` for ``reason``."""
    SCALING_DECISIONS_TOTAL.inc(deployment, variant, reason)


def _task_name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or sender or "unknown")


def on_task_success(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS.inc(_task_name(sender), "success")


def on_task_failure(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS.inc(_task_name(sender), "failure")


def on_task_retry(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS.inc(_task_name(sender), "retry")


def connect_celery_signals() -> None:
    """Count task outcomes in every process that runs tasks (Celery workers)."""
    from celery.signals import task_failure, task_retry, task_success

    task_success.connect(on_task_success, weak=False, dispatch_uid="kiln.metrics.task_success")
    task_failure.connect(on_task_failure, weak=False, dispatch_uid="kiln.metrics.task_failure")
    task_retry.connect(on_task_retry, weak=False, dispatch_uid="kiln.metrics.task_retry")
