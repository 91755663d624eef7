"""Observe and act on one variant's workers.

Observing: a worker the backend no longer runs has died; a starting worker becomes ready when
its backend says so (an HTTP probe for processes and containers); a ready worker that stops
reporting becomes unhealthy, then is replaced. Acting: dead workers are replaced with
exponential backoff and a crash loop ends in ``failed`` with the last log lines; replicas are
started and drained to the desired count (zero for a stopped deployment, a deployment being
deleted and a variant being removed); a new configuration rolls by starting new workers first
and draining old ones only once the new ones are ready.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from config.metrics.events import record_reconcile_action
from deployments.backends import BackendError, worker_backend
from deployments.models import LIVE_WORKER_STATES, Deployment, Variant, Worker, WorkerState
from deployments.reconcile.crashes import death_of, ends_crash_loop
from deployments.reconcile.spec import pick_image, spec_hash, worker_spec
from deployments.services.workers import new_worker_token


class VariantReconciler:
    """One pass over one variant's workers; ``run()`` says whether anything changed."""

    def __init__(self, deployment: Deployment, variant: Variant) -> None:
        self.deployment = deployment
        self.variant = variant
        self.backend = worker_backend(variant.backend)
        self.now = timezone.now()
        self.changed = False
        self.can_launch = True  # False while the variant's worker image is not ready
        self.problem = ""  # why it cannot run now, for the deployment's status
        self.problem_fatal = False
        if self.backend.uses_images and self.wanted_replicas():
            image = pick_image(variant)
            self.can_launch, self.problem, self.problem_fatal = image.ready, image.problem, image.failed
        self.spec = spec_hash(variant)

    def wanted_replicas(self) -> int:
        """The desired count: zero when the deployment is stopped or going, or the variant is going."""
        if not self.deployment.desired_running or self.variant.remove_requested_at is not None:
            return 0
        return self.variant.replicas

    def workers(self, *states: str) -> list[Worker]:
        return list(self.variant.workers.filter(state__in=states).select_related("version").order_by("id"))

    def run(self) -> bool:
        for worker in self.workers(*LIVE_WORKER_STATES):
            self.observe(worker)
        for worker in self.workers(WorkerState.DRAINING):
            self.finish_drain(worker)
        self.converge()
        return self.changed

    # -- observing -------------------------------------------------------------------------
    def observe(self, worker: Worker) -> None:
        if not worker.handle:
            return  # a replacement waiting for its backoff
        status = self.backend.status(worker.handle)
        if not status.running:
            self.on_death(worker, status.detail or "the worker exited")
            return
        if worker.state == WorkerState.STARTING:
            if self.backend.probe_ready(worker.handle, http_url=worker.http_url):
                self.set_state(worker, WorkerState.READY, ready_at=self.now, last_heartbeat=self.now)
            elif worker.started_at and self.now - worker.started_at > timedelta(
                seconds=settings.KILN_WORKER_START_TIMEOUT_S
            ):
                self.backend.stop(worker.handle, grace_s=2)
                self.on_death(worker, f"not ready after {settings.KILN_WORKER_START_TIMEOUT_S:.0f} s")
            return
        heartbeat = worker.last_heartbeat or worker.ready_at or worker.started_at or self.now
        silent = (self.now - heartbeat).total_seconds()
        if worker.state == WorkerState.READY and silent > settings.KILN_WORKER_STALE_S:
            self.set_state(worker, WorkerState.UNHEALTHY, last_error=f"no report for {silent:.0f} s")
        elif (
            worker.state == WorkerState.UNHEALTHY
            and silent > settings.KILN_WORKER_STALE_S + settings.KILN_WORKER_REPLACE_AFTER_S
        ):
            self.backend.stop(worker.handle, grace_s=5)
            self.on_death(worker, f"no report for {silent:.0f} s; replaced")

    def on_death(self, worker: Worker, detail: str) -> None:
        """Record why a worker ended and schedule its replacement, or end a crash loop."""
        log_tail = (
            self.backend.logs(worker.handle, log_path=worker.log_path, tail=20) if worker.handle else ""
        )
        error = f"{detail}\n{log_tail}".strip()
        if worker.handle:
            self.backend.stop(worker.handle, grace_s=0)  # release what is left of it (a dead container)
        death = death_of(worker, self.now)
        wanted = worker.spec_hash == self.spec and self.wanted_replicas() > 0
        if ends_crash_loop(self, worker, death, error):
            return
        self.set_state(worker, WorkerState.STOPPED, last_error=error)
        if wanted:
            # A worker that had served a while is replaced at once; crashes back off exponentially.
            backoff = (
                min(2 ** (death.restarts - 1), settings.KILN_RESTART_BACKOFF_MAX_S) if death.crashed else 0
            )
            Worker.objects.create(
                variant=self.variant,
                version=worker.version,
                backend=worker.backend,
                spec_hash=worker.spec_hash,
                restarts=death.restarts,
                next_attempt_at=self.now + timedelta(seconds=backoff),
                state=WorkerState.STARTING,
                last_error=error,
                state_changed_at=self.now,
            )

    def finish_drain(self, worker: Worker) -> None:
        if (
            worker.state_changed_at
            and (self.now - worker.state_changed_at).total_seconds() < settings.KILN_DRAIN_DELAY_S
        ):
            return
        if worker.handle:
            self.backend.stop(worker.handle, grace_s=settings.KILN_DRAIN_GRACE_S)
        self.set_state(worker, WorkerState.STOPPED)

    # -- acting ----------------------------------------------------------------------------
    def converge(self) -> None:
        live = self.workers(*LIVE_WORKER_STATES)
        current = [w for w in live if w.spec_hash == self.spec]
        old = [w for w in live if w.spec_hash != self.spec]
        desired = self.wanted_replicas()
        failed = self.variant.workers.filter(state=WorkerState.FAILED, spec_hash=self.spec).exists()
        if desired == 0:
            for worker in live:
                self.drain(worker)
            return
        for worker in current:
            due = not worker.handle and worker.next_attempt_at and worker.next_attempt_at <= self.now
            if due and self.can_launch:
                self.launch(worker)
        if len(current) < desired and not failed and self.can_launch:
            for _ in range(desired - len(current)):
                worker = Worker.objects.create(
                    variant=self.variant,
                    version=self.variant.version,
                    backend=self.variant.backend,
                    spec_hash=self.spec,
                    state=WorkerState.STARTING,
                    state_changed_at=self.now,
                )
                self.launch(worker)
                current.append(worker)
        elif len(current) > desired:
            surplus = sorted(current, key=lambda w: (w.state == WorkerState.READY, w.pk))
            for worker in surplus[: len(current) - desired]:
                self.drain(worker)
        ready_now = sum(1 for w in current if w.state == WorkerState.READY)
        if old and (ready_now >= desired or failed):
            for worker in old:
                self.drain(worker)

    def launch(self, worker: Worker) -> None:
        token, digest = new_worker_token()
        spec = worker_spec(deployment=self.deployment, variant=self.variant, worker=worker, token=token)
        try:
            handle = self.backend.start(spec)
        except BackendError as exc:
            if exc.code == "image_missing":
                from deployments.services.images import forget_missing_image

                forget_missing_image(tag=spec.image)
            Worker.objects.filter(pk=worker.pk).update(token_digest=digest)
            worker.refresh_from_db()
            self.on_death(worker, f"could not start: {exc.message}")
            self.changed = True
            return
        Worker.objects.filter(pk=worker.pk).update(
            handle=handle.handle,
            http_url=handle.http_url,
            grpc_target=handle.grpc_target,
            log_path=handle.log_path,
            token_digest=digest,
            started_at=self.now,
            next_attempt_at=None,
        )
        worker.refresh_from_db()
        self.changed = True
        self.count("restarted" if worker.restarts else "started")

    def drain(self, worker: Worker) -> None:
        """Take a worker out of the routing table now; stop it after the drain delay."""
        self.count("drained")
        if worker.state == WorkerState.READY:
            self.set_state(worker, WorkerState.DRAINING)
        else:
            if worker.handle:
                self.backend.stop(worker.handle, grace_s=5)
            self.set_state(worker, WorkerState.STOPPED)

    def count(self, action: str) -> None:
        """Prometheus: ``kiln_reconcile_actions_total{deployment, variant, action}``."""
        record_reconcile_action(deployment=self.deployment.name, variant=self.variant.name, action=action)

    def set_state(self, worker: Worker, state: str, **fields: object) -> None:
        Worker.objects.filter(pk=worker.pk).update(state=state, state_changed_at=self.now, **fields)
        worker.refresh_from_db()
        self.changed = True
