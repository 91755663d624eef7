"""A worker's death, read the same by every reconciler: a crash or not, and when crashes end a variant.

A worker that dies before it has served ``CRASH_WINDOW`` crashed: its replacement counts one more
restart, and past ``KILN_CRASHLOOP_RESTARTS`` in a row the variant fails (the worker's row
``failed`` with its last error, a ``variant.failed`` event with the log tail). A worker that served
longer died of something else: its replacement starts the count again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from django.conf import settings

from deployments.models import Deployment, Variant, Worker, WorkerState
from deployments.services.events import record_deployment_event

CRASH_WINDOW = timedelta(seconds=60)


class Reconciler(Protocol):
    """What a reconciler of one variant offers (``VariantReconciler``, ``ServiceReconciler``)."""

    deployment: Deployment
    variant: Variant
    now: datetime

    def count(self, action: str) -> None: ...

    def set_state(self, worker: Worker, state: str, **fields: object) -> None: ...


@dataclass(frozen=True)
class Death:
    crashed: bool
    """It died before serving ``CRASH_WINDOW`` (or before it was ever ready)."""
    restarts: int
    """The restart count its replacement carries."""


def death_of(worker: Worker, now: datetime) -> Death:
    crashed = worker.ready_at is None or now - worker.ready_at < CRASH_WINDOW
    return Death(crashed, worker.restarts + 1 if crashed else 1)


def ends_crash_loop(reconciler: Reconciler, worker: Worker, death: Death, error: str) -> bool:
    """Whether this death is one crash too many: then the worker is ``failed`` and the variant's
    failure recorded (its event, the reconcile action counted), and nothing replaces it."""
    if not death.crashed or death.restarts <= settings.KILN_CRASHLOOP_RESTARTS:
        return False
    reconciler.set_state(worker, WorkerState.FAILED, last_error=error)
    reconciler.count("failed")
    record_deployment_event(
        actor=None,
        action="variant.failed",
        deployment=reconciler.deployment,
        after={"variant": reconciler.variant.name, "restarts": worker.restarts},
        reason=f"crash loop after {worker.restarts} restarts: {error[-1500:]}",
    )
    return True
