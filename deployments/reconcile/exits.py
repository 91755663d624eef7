"""A worker's exit noticed the moment it happens: an immediate reconcile pass for its deployment.

The loop's own passes (every ``KILN_RECONCILE_INTERVAL_S``) would notice a dead worker, start a
replacement and see it ready one pass each. ``ExitWatcher`` runs in the Celery worker that serves
the short queue: it holds a pidfd for every live ``process`` worker on this machine (any process
may wait on a pidfd, not only the parent) and, when one exits, queues
``deployments.reconcile_after_exit``. That task runs a pass at once (waiting for one already
running) and follows up every ``FOLLOW_UP_S`` while the deployment has a worker starting, so the
replacement is routed as soon as it is ready. The watcher starts nothing itself: the reconcile
loop stays the only code that starts workers. Containers (docker, swarm) are noticed by the
loop's passes.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Any

from django.db import DatabaseError, close_old_connections

from config import dispatch
from deployments.models import LIVE_WORKER_STATES, Worker, WorkerState

logger = logging.getLogger(__name__)

FOLLOW_UPS = 40
FOLLOW_UP_S = 0.5
"""After an exit, passes every half second for up to 20 s while a replacement starts."""
LOCK_WAIT_S = 10.0


def reconcile_after_exit(deployment_id: int, follow_ups: int) -> bool:
    """One pass now; another in ``FOLLOW_UP_S`` while a worker of the deployment is starting."""
    from deployments.reconcile.loop import reconcile_deployment

    changed = reconcile_deployment(deployment_id, wait_s=LOCK_WAIT_S)
    starting = Worker.objects.filter(variant__deployment_id=deployment_id, state=WorkerState.STARTING)
    if follow_ups > 0 and starting.exists():
        dispatch.send(
            "deployments.reconcile_after_exit", deployment_id, follow_ups - 1, countdown=FOLLOW_UP_S
        )
    return changed


class ExitWatcher(threading.Thread):
    """Waits on the pidfds of this machine's live process workers; each exit queues a pass."""

    def __init__(self, *, refresh_s: float = 1.0) -> None:
        super().__init__(name="kiln-exit-watcher", daemon=True)
        self.refresh_s = refresh_s
        self.watched: dict[int, tuple[str, int]] = {}  # pidfd -> (handle, deployment id)
        self.seen: set[str] = set()  # handles already watched or reported
        self.poller = select.poll()

    def run(self) -> None:
        while True:
            try:
                self.refresh()
            except DatabaseError as exc:
                logger.warning("exit watcher: %s", exc)
                close_old_connections()
                time.sleep(self.refresh_s)
                continue
            for fd, _events in self.poller.poll(self.refresh_s * 1000):
                handle, deployment_id = self.watched.pop(fd)
                self.poller.unregister(fd)
                os.close(fd)
                self.exited(handle, deployment_id)

    def refresh(self) -> None:
        """Watch the workers that are new since the last look; forget those no longer live."""
        from deployments.backends.process import ProcessBackend

        close_old_connections()
        live = dict(
            Worker.objects.filter(backend="process", state__in=LIVE_WORKER_STATES)
            .exclude(handle="")
            .values_list("handle", "variant__deployment_id")
        )
        for fd, (handle, _deployment) in list(self.watched.items()):
            if handle not in live:
                del self.watched[fd]
                self.poller.unregister(fd)
                os.close(fd)
        self.seen &= set(live)
        backend = ProcessBackend()
        for handle, deployment_id in live.items():
            if handle in self.seen:
                continue
            self.seen.add(handle)
            exit_fd = backend.exit_fd(handle)
            if exit_fd is None:
                self.exited(handle, deployment_id)
                continue
            self.watched[exit_fd] = (handle, deployment_id)
            self.poller.register(exit_fd, select.POLLIN)

    def exited(self, handle: str, deployment_id: int) -> None:
        logger.info("worker %s exited; reconciling deployment %s now", handle, deployment_id)
        try:
            dispatch.send("deployments.reconcile_after_exit", deployment_id, FOLLOW_UPS)
        except Exception as exc:  # the broker is down: the loop's next pass notices the exit
            logger.warning("could not queue a reconcile pass after an exit: %s", exc)


def start_exit_watcher(sender: Any = None, **_: Any) -> None:
    """``worker_ready`` handler: watch exits in the Celery worker that consumes the short queue."""
    from django.conf import settings

    consumer = getattr(sender, "task_consumer", None)
    queues = {queue.name for queue in getattr(consumer, "queues", ())}
    if settings.CELERY_TASK_DEFAULT_QUEUE in queues and hasattr(os, "pidfd_open"):
        ExitWatcher().start()
