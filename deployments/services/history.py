"""History nothing reads after a while leaves the database (and the disk), so both stay flat.

Stopped workers with their log files, the autoscaler's decisions, and webhook deliveries that
ended (delivered or failed) are kept ``KILN_HISTORY_RETENTION_DAYS`` (0: for ever), then deleted
by an hourly beat task in batches of ``HISTORY_BATCH`` rows, at most ``HISTORY_BATCHES`` a table
and pass (a backlog goes over the next passes). Reports keep their
own retention (``rollups``); a deleted worker's reports stay, without it. A failed worker stays: it
marks its configuration's crash loop (the variant does not start it again) until the user restarts
the deployment, which stops it. Audit events are the record of who did what, and are kept.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from deployments.autoscaling.models import ScalingDecision
from deployments.models import Worker, WorkerState
from deployments.services.pruning import delete_in_batches
from deployments.webhooks.models import DeliveryStatus, WebhookDelivery

logger = logging.getLogger(__name__)
HISTORY_BATCH = 1000
HISTORY_BATCHES = 20
ENDED_DELIVERY_STATES = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)


def prune_history(*, now: datetime | None = None) -> dict[str, int]:
    """Delete the history older than the retention; how many rows of each kind went."""
    counts = {"workers": 0, "worker_logs": 0, "scaling_decisions": 0, "webhook_deliveries": 0}
    days = float(settings.KILN_HISTORY_RETENTION_DAYS)
    if days <= 0:
        return counts
    cutoff = (now or timezone.now()) - timedelta(days=days)
    workers = Worker.objects.filter(state=WorkerState.STOPPED).filter(
        Q(state_changed_at__lt=cutoff) | Q(state_changed_at__isnull=True, created_at__lt=cutoff)
    )
    counts["workers"], counts["worker_logs"] = delete_in_batches(
        workers, size=HISTORY_BATCH, most=HISTORY_BATCHES, column="log_path", then=_remove_logs
    )
    counts["scaling_decisions"], _ = delete_in_batches(
        ScalingDecision.objects.filter(created_at__lt=cutoff), size=HISTORY_BATCH, most=HISTORY_BATCHES
    )
    counts["webhook_deliveries"], _ = delete_in_batches(
        WebhookDelivery.objects.filter(status__in=ENDED_DELIVERY_STATES, created_at__lt=cutoff),
        size=HISTORY_BATCH,
        most=HISTORY_BATCHES,
    )
    if any(counts.values()):
        logger.info("history older than %s days deleted: %s", f"{days:g}", counts)
    return counts


def _remove_logs(paths: list[str]) -> int:
    return sum(_remove_log(path) for path in paths)


def _remove_log(path: str) -> bool:
    """Remove a worker's log file, only where the backends write them (``<var>/workers``)."""
    if not path:
        return False
    log = Path(path)
    if log.parent.resolve() != (Path(settings.VAR_DIR) / "workers").resolve() or log.suffix != ".log":
        return False
    try:
        log.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("the log file of an ended worker stays: %s", exc)
        return False
    return True
