"""Observe and act on a variant whose backend owns placement (swarm): one service, its tasks mirrored.

The orchestrator starts, places, replaces, moves and rolls the tasks; a pass writes the service
the variant wants and keeps one worker row per task, so routing, reports, the dashboard and the
API read workers as they do for the other backends:

- a task seen for the first time gets a row (``handle`` its id, ``slot``, ``node``); a task that
  replaces a dead one in the same slot takes over the row that death left waiting, with its
  restart count and last error;
- a running task is routed once its worker's report gave its ports and it answers the readiness
  probe; a task the orchestrator stops (rolling update, scale-down, drained node) or whose
  worker reports ``draining`` leaves the routing table at once, while it still serves for
  ``KILN_SWARM_SHUTDOWN_DELAY_S``: that is the drain before the stop;
- a task that died (it exited, failed its health check, lost its node) is recorded; crashes of one
  slot in a row past ``KILN_CRASHLOOP_RESTARTS`` fail the variant and scale its service to zero;
- tasks no node can take say why ("no suitable node ..."), and an update the orchestrator rolled
  back says so; that update is not sent again until the variant changes;
- at zero wanted replicas (stopped, deleted, removed) the service goes to zero, and is removed once
  its tasks have ended.
"""

from __future__ import annotations

from dataclasses import replace

from django.conf import settings
from django.utils import timezone

from config.metrics.events import record_reconcile_action
from deployments.backends.base import Replica, ServiceBackend, ServiceStatus
from deployments.models import (
    BUSY_WORKER_STATES,
    LIVE_WORKER_STATES,
    Deployment,
    Variant,
    Worker,
    WorkerState,
)
from deployments.reconcile.crashes import death_of, ends_crash_loop
from deployments.reconcile.spec import pick_image, service_spec, spec_hash
from deployments.services.workers import last_report_of
from inference_worker.contracts.report import DRAINING, Listen
from registry.models import ModelVersion


class ServiceReconciler:
    """One pass over one variant's service; ``run()`` says whether a worker row changed."""

    def __init__(self, deployment: Deployment, variant: Variant, backend: ServiceBackend) -> None:
        self.deployment = deployment
        self.variant = variant
        self.backend = backend
        self.now = timezone.now()
        self.changed = False
        self.problem = ""  # why it cannot run now, for the deployment's status
        self.problem_fatal = False
        self.image_ready = True
        if self.backend.uses_images and self.asked_replicas():
            image = pick_image(variant)
            self.image_ready, self.problem, self.problem_fatal = image.ready, image.problem, image.failed
        self.spec = spec_hash(variant)

    def asked_replicas(self) -> int:
        """What the user asked for: zero when the deployment is stopped or going, or the variant is going."""
        if not self.deployment.desired_running or self.variant.remove_requested_at is not None:
            return 0
        return self.variant.replicas

    def wanted_replicas(self) -> int:
        """What the service runs: what was asked, unless this configuration ended in a crash loop."""
        if self.variant.workers.filter(state=WorkerState.FAILED, spec_hash=self.spec).exists():
            return 0
        return self.asked_replicas()

    def run(self) -> bool:
        status = self.backend.service_status(self.variant.pk)
        self.mirror(status)
        self.converge(status)
        return self.changed

    # -- observing -------------------------------------------------------------------------
    def mirror(self, status: ServiceStatus) -> None:
        """Bring the rows in line with the tasks."""
        listed = {task.handle for task in status.tasks}
        rows = {w.handle: w for w in self.variant.workers.filter(handle__in=listed)}
        # Deaths first: the task that replaces one in the same listing takes over the row it leaves.
        for task in sorted(status.tasks, key=lambda task: not task.ended):
            row = rows.get(task.handle)
            if task.ended:
                if row is None and task.died and self.unseen_death(task):
                    row = self.adopt(task, status)
                if row is not None and row.state in BUSY_WORKER_STATES:
                    self.end(row, task)
                continue
            self.observe(row or self.adopt(task, status), task)
        for row in self.variant.workers.filter(state__in=BUSY_WORKER_STATES).exclude(handle=""):
            if row.handle not in listed:  # the service or the task's record is gone
                self.set_state(row, WorkerState.STOPPED)

    def unseen_death(self, task: Replica) -> bool:
        """A task that died between two passes: newer than every row its slot had (older ones are history)."""
        newest = self.variant.workers.filter(slot=task.slot).order_by("-created_at").first()
        return newest is None or task.created_at > newest.created_at.timestamp()

    def adopt(self, task: Replica, status: ServiceStatus) -> Worker:
        """The row of a task: the one a death in its slot left waiting, or a new one."""
        fields = {
            "handle": task.handle,
            "node": task.node,
            "slot": task.slot,
            "spec_hash": task.spec_hash,
            "version": self.version(task.version),
            "token_digest": status.token_digest,
            "started_at": self.now,
            "state": WorkerState.STARTING,
            "state_changed_at": self.now,
            "next_attempt_at": None,
        }
        waiting = self.variant.workers.filter(state=WorkerState.STARTING, handle="", slot=task.slot).first()
        if waiting is not None:
            if waiting.spec_hash != task.spec_hash:
                fields["restarts"] = 0
            Worker.objects.filter(pk=waiting.pk).update(**fields)
            waiting.refresh_from_db()
            self.count("restarted" if waiting.restarts else "started")
            self.changed = True
            return waiting
        self.count("started")
        self.changed = True
        return Worker.objects.create(variant=self.variant, backend=self.variant.backend, **fields)

    def version(self, number: int) -> ModelVersion:
        if number == self.variant.version.version:
            return self.variant.version
        found = ModelVersion.objects.filter(model_id=self.deployment.model_id, version=number).first()
        return found or self.variant.version

    def observe(self, row: Worker, task: Replica) -> None:
        if task.node and task.node != row.node:
            Worker.objects.filter(pk=row.pk).update(node=task.node)
            row.node = task.node
        report = last_report_of(row)
        leaving = task.stopping or (report is not None and report.state == DRAINING)
        if row.state not in LIVE_WORKER_STATES:
            return
        if leaving:
            self.count("drained")
            self.set_state(row, WorkerState.DRAINING)
            return
        if not task.running:
            return  # pending, pulling or starting: the orchestrator's business
        if row.state == WorkerState.STARTING:
            if not row.http_url and report is not None and report.listen is not None:
                self.locate(row, task, report.listen)
            if row.http_url and self.backend.probe_ready(row.handle, http_url=row.http_url):
                self.set_state(row, WorkerState.READY, ready_at=self.now, last_heartbeat=self.now)
            return
        heartbeat = row.last_heartbeat or row.ready_at or row.started_at or self.now
        silent = (self.now - heartbeat).total_seconds()
        if row.state == WorkerState.READY and silent > settings.KILN_WORKER_STALE_S:
            self.set_state(row, WorkerState.UNHEALTHY, last_error=f"no report for {silent:.0f} s")

    def locate(self, row: Worker, task: Replica, listen: Listen) -> None:
        """The worker's address: its node's, with the ports its first report gave."""
        if not task.address:
            return
        host = f"[{task.address}]" if ":" in task.address else task.address
        http_port, grpc_port = listen.http_port, listen.grpc_port
        grpc = f"{host}:{grpc_port}" if grpc_port > 0 else ""
        Worker.objects.filter(pk=row.pk).update(http_url=f"http://{host}:{http_port}", grpc_target=grpc)
        row.http_url, row.grpc_target = f"http://{host}:{http_port}", grpc

    def end(self, row: Worker, task: Replica) -> None:
        if not task.died:
            self.set_state(row, WorkerState.STOPPED)
            return
        log_tail = self.backend.logs(row.handle, log_path=row.log_path, tail=20)
        error = f"{task.error}\n{log_tail}".strip()
        death = death_of(row, self.now)
        if ends_crash_loop(self, row, death, error):
            return
        self.set_state(row, WorkerState.STOPPED, last_error=error)
        waiting = self.variant.workers.filter(state=WorkerState.STARTING, handle="", slot=row.slot)
        if self.asked_replicas() and not waiting.exists():
            Worker.objects.create(  # the orchestrator's replacement takes this row over
                variant=self.variant,
                version=row.version,
                backend=row.backend,
                spec_hash=row.spec_hash,
                slot=row.slot,
                restarts=death.restarts,
                state=WorkerState.STARTING,
                last_error=error,
                state_changed_at=self.now,
            )

    # -- acting ----------------------------------------------------------------------------
    def converge(self, status: ServiceStatus) -> None:
        wanted = self.wanted_replicas()
        for waiting in self.variant.workers.filter(state=WorkerState.STARTING, handle=""):
            gone = status.exists and status.spec_hash != waiting.spec_hash  # e.g. an update rolled back
            if waiting.slot is None or waiting.slot > wanted or gone:
                self.set_state(waiting, WorkerState.STOPPED)
        if wanted == 0:
            if any(not task.ended for task in status.tasks):
                self.backend.scale_service(self.variant.pk, 0)
            elif status.exists:
                self.backend.remove_service(self.variant.pk)
            return
        if not self.image_ready:
            if status.exists:
                self.backend.scale_service(self.variant.pk, wanted)  # the current image keeps serving
            return
        if status.rolling_back:
            self.problem = f"variant {self.variant.name}: the swarm is rolling an update back"
            return
        if status.rolled_back and status.spec_hash != self.spec and not status.rolled_back_from:
            self.backend.note_rollback(self.variant.pk, self.spec)  # the update to this configuration failed
            status = replace(status, rolled_back_from=self.spec)
        if status.rolled_back_from == self.spec:
            self.problem_fatal = True
            self.problem = (
                f"variant {self.variant.name}: the swarm rolled the update back (a new task failed: see the "
                "workers' last errors); the earlier configuration serves until the variant changes again"
            )
            self.backend.scale_service(self.variant.pk, wanted)
            return
        self.backend.apply_service(
            service_spec(deployment=self.deployment, variant=self.variant, replicas=wanted)
        )
        pending = [task for task in status.tasks if not task.ended and not task.node and task.error]
        if pending and not self.problem:
            self.problem = (
                f"variant {self.variant.name}: {len(pending)} replica(s) pending: {pending[0].error}"
            )

    def count(self, action: str) -> None:
        """Prometheus: ``kiln_reconcile_actions_total{deployment, variant, action}``."""
        record_reconcile_action(deployment=self.deployment.name, variant=self.variant.name, action=action)

    def set_state(self, worker: Worker, state: str, **fields: object) -> None:
        Worker.objects.filter(pk=worker.pk).update(state=state, state_changed_at=self.now, **fields)
        worker.refresh_from_db()
        self.changed = True
