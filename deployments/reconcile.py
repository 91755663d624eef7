"""The reconcile loop: make the running workers match what each variant asks for.

Runs from beat every few seconds and right after every change, under a
per-deployment advisory lock, so overlapping runs never both act. Each pass
observes (backend status, readiness, report heartbeats), then acts: replaces
dead workers with exponential backoff, ends a crash loop in ``failed`` with the
last log lines, starts and drains replicas to the desired count, and rolls to a
new configuration by starting new workers first and draining old ones only once
the new ones are ready. Workers that still run after a platform restart are
found through their rows and kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.locks import advisory_lock
from config.observability.events import record_reconcile_action
from deployments.backends import BackendError, WorkerSpec, get_backend
from deployments.backends.process import trim_log
from deployments.models import (
    LIVE_WORKER_STATES,
    Deployment,
    DeploymentStatus,
    ImageStatus,
    Variant,
    Worker,
    WorkerState,
)
from deployments.services.events import record_deployment_event
from deployments.services.routing import publish_routing_table
from deployments.services.variants import followers_pending, roll_alias_followers
from deployments.services.workers import new_worker_token
from inference_worker.contracts.launch import LaunchSpec
from registry import storage
from registry.models import Alias

logger = logging.getLogger(__name__)
CRASH_WINDOW = timedelta(seconds=60)


def spec_hash(variant: Variant) -> str:
    """A fingerprint of everything that needs a new worker when it changes.

    The batching options are listed in the table's order, so a new option (a new
    flag for the worker) changes every fingerprint: the workers roll to get it.
    """
    data = {
        "version": variant.version_id,
        "onnx": variant.version.onnx_sha256,
        "batching": list(variant.batching.values().values()),  # the option table's order
        "gpu_ids": sorted(variant.gpu_ids),
        "backend": variant.backend,
        "image": variant.image,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def reconcile_all() -> dict[str, int]:
    """Reconcile every deployment, then stop workers nobody wants any more."""
    counts = {"deployments": 0, "changed": 0, "orphans": 0}
    for deployment_id in Deployment.objects.values_list("pk", flat=True):
        counts["deployments"] += 1
        counts["changed"] += int(reconcile_deployment(deployment_id))
    with advisory_lock("deployments.cleanup") as taken:
        if taken:
            counts["orphans"] = stop_orphans()
            ensure_routing_table()
            _remember_docker_engine()
    return counts


def _remember_docker_engine() -> None:
    """Let processes without the engine's socket (the web app in compose) validate docker variants."""
    uses_docker = (
        settings.KILN_DEFAULT_BACKEND == "docker" or Variant.objects.filter(backend="docker").exists()
    )
    if not uses_docker:
        return
    from deployments.backends.docker import engine, remember_engine

    try:
        remember_engine(engine(timeout_s=5).info())
    except Exception as exc:  # no engine: validation in other processes refuses docker variants
        logger.info("the Docker engine does not answer: %s", exc)


def ensure_routing_table() -> None:
    """Publish the table when Redis has none (a fresh or restarted Redis): gateways wait for one."""
    from deployments.services.routing import redis_client

    try:
        missing = not redis_client().exists(settings.KILN_ROUTING_KEY)
    except Exception as exc:  # Redis down: the next pass tries again
        logger.warning("cannot check the routing table: %s", exc)
        return
    if missing:
        publish_routing_table()


def reconcile_deployment(deployment_id: int) -> bool:
    """One pass over one deployment; returns whether anything changed."""
    with advisory_lock(f"deployments.reconcile.{deployment_id}") as taken:
        if not taken:
            return False
        deployment = Deployment.objects.select_related("model").filter(pk=deployment_id).first()
        if deployment is None:
            return False
        changed = False
        for variant in followers_pending(deployment):
            alias = Alias.objects.select_related("version").get(
                model_id=deployment.model_id, name=variant.alias
            )
            changed |= bool(roll_alias_followers(alias=alias))
        problems: dict[int, tuple[bool, str]] = {}  # variant -> (fatal, why it cannot run now)
        for variant in deployment.variants.select_related("version__model").order_by("id"):
            try:
                reconciler = VariantReconciler(deployment, variant)
                changed |= reconciler.run()
            except BackendError as exc:  # e.g. the engine is down: decide nothing about its workers now
                logger.warning("reconcile of %s skipped: %s", variant, exc.message)
                problems[variant.pk] = (False, f"variant {variant.name}: {exc.message}")
                continue
            if reconciler.image_problem:
                problems[variant.pk] = (reconciler.image_failed, reconciler.image_problem)
        _update_status(deployment, problems)
        if changed:
            publish_routing_table()
        return changed


class VariantReconciler:
    """Observe and act on one variant's workers."""

    def __init__(self, deployment: Deployment, variant: Variant) -> None:
        self.deployment = deployment
        self.variant = variant
        self.backend = get_backend(variant.backend)
        self.now = timezone.now()
        self.changed = False
        self.can_launch = True  # False while the variant's worker image is not ready
        self.image_problem = ""  # why, for the deployment's status
        self.image_failed = False
        if self.backend.uses_images:
            self.choose_image()
        self.spec = spec_hash(variant)

    def choose_image(self) -> None:
        """Run the image the image service says is ready (a new one rolls the workers); else wait for it."""
        from deployments.services.images import image_for_variant

        tag, wanted = image_for_variant(variant=self.variant)
        if tag and tag != self.variant.image:
            Variant.objects.filter(pk=self.variant.pk).update(image=tag)
            self.variant.image = tag
        if tag is None:
            self.can_launch = False
            if wanted.status == ImageStatus.FAILED:
                self.image_failed = True
                self.image_problem = f"the worker image {wanted.tag} failed to build: {wanted.error}"
            else:
                self.image_problem = f"variant {self.variant.name}: building the worker image {wanted.tag}"

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
            if _probe_ready(worker.http_url):
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
        crashed = worker.ready_at is None or self.now - worker.ready_at < CRASH_WINDOW
        restarts = worker.restarts + 1 if crashed else 1
        wanted = (
            worker.spec_hash == self.spec and self.deployment.desired_running and self.variant.replicas > 0
        )
        if crashed and restarts > settings.KILN_CRASHLOOP_RESTARTS:
            self.set_state(worker, WorkerState.FAILED, last_error=error)
            self.count("failed")
            record_deployment_event(
                actor=None,
                action="variant.failed",
                deployment=self.deployment,
                after={"variant": self.variant.name, "restarts": worker.restarts},
                reason=f"crash loop after {worker.restarts} restarts: {error[-1500:]}",
            )
            return
        self.set_state(worker, WorkerState.STOPPED, last_error=error)
        if wanted:
            backoff = min(2 ** (restarts - 1), settings.KILN_RESTART_BACKOFF_MAX_S)
            Worker.objects.create(
                variant=self.variant,
                version=worker.version,
                backend=worker.backend,
                spec_hash=worker.spec_hash,
                restarts=restarts,
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
        desired = self.variant.replicas if self.deployment.desired_running else 0
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
        version = self.variant.version  # replacements share the variant's spec, hence its version
        spec = WorkerSpec(
            worker_id=worker.pk,
            deployment=self.deployment.name,
            variant=self.variant.name,
            onnx_path=storage.resolve(version.onnx_path),
            gpu_ids=tuple(self.variant.gpu_ids),
            launch=LaunchSpec(
                model_name=self.deployment.name,
                model_version=str(version.version),
                model_sha256=version.onnx_sha256,
                batching=self.variant.batching,
                report_url=f"{settings.KILN_PUBLIC_URL}/api/v1/workers/{worker.pk}/reports/",
                report_token=token,
                report_interval_s=settings.KILN_REPORT_INTERVAL_S,
                worker_id=str(worker.pk),
            ),
            image=self.variant.image,
            labels={
                "deployment": self.deployment.name,
                "variant": self.variant.name,
                "version": str(version.version),
            },
        )
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


def _probe_ready(url: str) -> bool:
    if not url:
        return False
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _update_status(deployment: Deployment, problems: dict[int, tuple[bool, str]] | None = None) -> None:
    """The deployment's status from its workers; ``problems``: per variant, (fatal, why it cannot run)."""
    problems = problems or {}
    variants = list(deployment.variants.all())
    workers = list(Worker.objects.filter(variant__deployment=deployment).exclude(state=WorkerState.STOPPED))
    reason = ""
    if not deployment.desired_running:
        busy = any(w.state != WorkerState.FAILED for w in workers)
        status = DeploymentStatus.STOPPING if busy else DeploymentStatus.STOPPED
    else:
        failed = [
            w
            for w in workers
            if w.state == WorkerState.FAILED
            and w.spec_hash == spec_hash(next(v for v in variants if v.pk == w.variant_id))
        ]
        ready = {
            v.pk: sum(1 for w in workers if w.variant_id == v.pk and w.state == WorkerState.READY)
            for v in variants
        }
        fatal = [text for is_fatal, text in problems.values() if is_fatal]
        if failed or fatal:
            status = DeploymentStatus.FAILED
            reason = failed[-1].last_error if failed else fatal[0]
        elif all(ready[v.pk] >= v.replicas for v in variants):
            status = DeploymentStatus.SERVING
        elif any(ready.values()):
            status = DeploymentStatus.DEGRADED
        else:
            status, reason = DeploymentStatus.DEPLOYING, "; ".join(text for _, text in problems.values())
    if (deployment.status, deployment.status_reason) != (status, reason):
        with transaction.atomic():
            Deployment.objects.filter(pk=deployment.pk).update(status=status, status_reason=reason[:4000])
            if status == DeploymentStatus.FAILED:
                record_deployment_event(
                    actor=None,
                    action="deployment.failed",
                    deployment=deployment,
                    before={"status": deployment.status},
                    after={"status": status},
                    reason=reason[-2000:],
                )


def stop_all_workers(deployment: Deployment) -> None:
    """Stop every worker of ``deployment`` now (used before deleting it)."""
    for variant in deployment.variants.all():
        stop_all_workers_of_variant(variant)


def stop_all_workers_of_variant(variant: Variant) -> None:
    """Stop every worker of ``variant`` now."""
    stop_workers(variant.workers.exclude(state__in=(WorkerState.STOPPED, WorkerState.FAILED)))


def stop_workers(workers: Iterable[Worker]) -> None:
    """Stop these workers now and mark them stopped."""
    for worker in workers:
        if worker.handle:
            get_backend(worker.backend).stop(worker.handle, grace_s=5)
        Worker.objects.filter(pk=worker.pk).update(state=WorkerState.STOPPED, state_changed_at=timezone.now())


def stop_orphans() -> int:
    """Stop workers a backend runs for us that no live row knows (left over from a crash)."""
    known = set(
        Worker.objects.exclude(state__in=(WorkerState.STOPPED, WorkerState.FAILED)).values_list(
            "handle", flat=True
        )
    )
    stopped = 0
    for name in set(Worker.objects.values_list("backend", flat=True).distinct()) | {"process"}:
        try:
            backend = get_backend(name)
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
