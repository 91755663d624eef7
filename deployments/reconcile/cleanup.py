"""Workers no row wants: orphans a crash left behind, and local workers when the platform stops."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from deployments.backends import BackendError, ServiceBackend, get_backend, owns_placement, worker_backend
from deployments.backends.logs import trim_log
from deployments.measure_models import ACTIVE_MEASUREMENT_STATES, MeasurementRun
from deployments.models import Variant, Worker, WorkerState

logger = logging.getLogger(__name__)


def stop_workers(workers: Iterable[Worker]) -> None:
    """Stop these workers now and mark them stopped (``make run`` stopping its local workers)."""
    for worker in workers:
        if worker.handle:
            worker_backend(worker.backend).stop(worker.handle, grace_s=5)
        Worker.objects.filter(pk=worker.pk).update(state=WorkerState.STOPPED, state_changed_at=timezone.now())


def stop_orphans() -> int:
    """Stop workers (and remove services) a backend runs for us that no live row knows (left by a crash)."""
    known = set(
        Worker.objects.exclude(state__in=(WorkerState.STOPPED, WorkerState.FAILED)).values_list(
            "handle", flat=True
        )
    )
    # A serving-advice measurement's worker, while its run is active (once it ended, an orphan).
    known |= set(
        MeasurementRun.objects.filter(status__in=ACTIVE_MEASUREMENT_STATES)
        .exclude(worker_handle="")
        .values_list("worker_handle", flat=True)
    )
    stopped = 0
    names = set(Worker.objects.values_list("backend", flat=True).distinct())
    names |= set(Variant.objects.values_list("backend", flat=True).distinct())
    names |= {"process", settings.KILN_DEFAULT_BACKEND}  # leftovers of variants long gone, too
    for name in names:
        try:
            backend = get_backend(name)
            if owns_placement(backend):
                stopped += _remove_orphan_services(backend)
                continue
            handles = backend.managed_handles(min_age_s=60.0)
        except BackendError as exc:
            logger.warning("cannot list %s workers: %s", name, exc.message)
            continue
        for handle in handles:
            if handle not in known:
                logger.info("stopping orphan %s worker %s", name, handle)
                backend.stop(handle, grace_s=5)
                stopped += 1
    for path in (Path(settings.VAR_DIR) / "workers").glob("*.log"):
        trim_log(path, max_bytes=settings.KILN_WORKER_LOG_MAX_BYTES)
    return stopped


def _remove_orphan_services(backend: ServiceBackend) -> int:
    """Services (and leftover secrets) of variants that are gone or run elsewhere now."""
    wanted = set(Variant.objects.filter(backend=backend.name).values_list("pk", flat=True))
    orphans = [
        variant_id for variant_id in backend.managed_services(min_age_s=60.0) if variant_id not in wanted
    ]
    for variant_id in orphans:
        logger.info("removing the orphan %s service of variant %s", backend.name, variant_id)
        backend.remove_service(variant_id)
    return len(orphans)
