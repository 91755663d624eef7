"""The reconcile loop, pass by pass, on the in-memory backend: crash loops, backoff, drain, rolling
updates, adoption, orphans, deletion and removal as desired state. Real database, no processes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from deployments.inputs import VariantSpec
from deployments.models import Deployment, DeploymentStatus, Variant, Worker, WorkerState
from deployments.reconcile import reconcile_deployment, stop_orphans
from deployments.reconcile.variant import VariantReconciler
from deployments.services.deployments import create_deployment, delete_deployment, remove_variant
from deployments.services.routing import build_routing_table
from deployments.services.variants import scale_variant, update_batching
from registry.models import AuditEvent, RegisteredModel
from tests.support.memory_backend import MemoryBackend, memory_backend
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend(settings: Any) -> Iterator[MemoryBackend]:
    settings.KILN_DRAIN_DELAY_S = 0.0
    settings.KILN_CRASHLOOP_RESTARTS = 3
    with memory_backend() as installed:
        yield installed


def _deploy(owner: User, *, replicas: int = 2, variants: list[dict[str, Any]] | None = None) -> Deployment:
    ready_version(owner, number=1)
    ready_version(owner, number=2)
    return create_deployment(
        name="fraud",
        model=RegisteredModel.objects.get(name="cnn"),
        variants=[
            VariantSpec.parse(raw)
            for raw in variants
            or [{"name": "primary", "version": 1, "replicas": replicas, "backend": "memory"}]
        ],
        actor=owner,
    )


def _states(deployment: Deployment, variant: str = "primary") -> list[str]:
    return sorted(
        Worker.objects.filter(variant__deployment=deployment, variant__name=variant)
        .exclude(state=WorkerState.STOPPED)
        .values_list("state", flat=True)
    )


def _pass(deployment: Deployment) -> bool:
    return reconcile_deployment(deployment.pk)


def _serving(owner: User, backend: MemoryBackend, **kwargs: Any) -> Deployment:
    deployment = _deploy(owner, **kwargs)
    _pass(deployment)
    backend.make_ready()
    _pass(deployment)
    return deployment


def _actions(deployment: Deployment) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject=f"deployment/{deployment.name}")
        .order_by("id")
        .values_list("action", flat=True)
    )


@pytest.mark.parametrize(
    ("replicas", "running", "deleting", "removing", "wanted"),
    [
        (2, True, False, False, 2),
        (0, True, False, False, 0),
        (2, False, False, False, 0),
        (2, False, True, False, 0),
        (3, True, False, True, 0),
    ],
)
def test_the_desired_replica_count_follows_the_deployment_and_variant_state(
    owner: User,
    backend: MemoryBackend,
    replicas: int,
    running: bool,
    deleting: bool,
    removing: bool,
    wanted: int,
) -> None:
    deployment = _deploy(owner, replicas=1)
    deployment.desired_running = running
    deployment.delete_requested_at = timezone.now() if deleting else None
    variant = deployment.variants.get()
    variant.replicas = replicas
    variant.remove_requested_at = timezone.now() if removing else None
    assert VariantReconciler(deployment, variant).wanted_replicas() == wanted


def test_replicas_start_become_ready_and_the_deployment_serves(owner: User, backend: MemoryBackend) -> None:
    deployment = _deploy(owner, replicas=2)
    assert _pass(deployment)
    assert _states(deployment) == ["starting", "starting"]
    assert len(backend.running()) == 2
    assert _pass(deployment) is False  # nothing ready yet: nothing to do
    backend.make_ready()
    assert _pass(deployment)
    assert _states(deployment) == ["ready", "ready"]
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SERVING
    routed = build_routing_table().deployments["fraud"].variants[0].replicas
    assert len(routed) == 2


def test_a_dead_worker_is_replaced_after_a_backoff_and_a_crash_loop_ends_failed_with_its_log(
    owner: User, backend: MemoryBackend
) -> None:
    deployment = _deploy(owner, replicas=1)
    _pass(deployment)
    for attempt in range(1, 4):
        (handle,) = backend.running()
        backend.crash(handle, line=f"RuntimeError: bad model (attempt {attempt})")
        _pass(deployment)
        waiting = Worker.objects.get(variant__deployment=deployment, state=WorkerState.STARTING)
        assert waiting.handle == ""
        assert waiting.restarts == attempt
        assert waiting.next_attempt_at is not None
        assert backend.running() == []
        _pass(deployment)  # before the backoff ends: still waiting
        assert backend.running() == []
        Worker.objects.filter(pk=waiting.pk).update(
            next_attempt_at=waiting.next_attempt_at - timedelta(hours=1)
        )
        _pass(deployment)
        assert len(backend.running()) == 1
    (handle,) = backend.running()
    backend.crash(handle, line="RuntimeError: bad model (attempt 4)")
    _pass(deployment)
    assert _states(deployment) == ["failed"]
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.FAILED
    assert "attempt 4" in deployment.status_reason
    assert "variant.failed" in _actions(deployment)
    _pass(deployment)
    assert backend.running() == []  # no restart after the loop ended


def test_a_worker_that_served_a_while_is_replaced_in_the_pass_that_sees_it_die(
    owner: User, backend: MemoryBackend
) -> None:
    deployment = _serving(owner, backend, replicas=1)
    Worker.objects.update(ready_at=timezone.now() - timedelta(minutes=5))  # past the crash window
    (handle,) = backend.running()
    backend.crash(handle, line="Killed")
    _pass(deployment)
    replacement = Worker.objects.get(variant__deployment=deployment, state=WorkerState.STARTING)
    assert (replacement.restarts, replacement.handle != "") == (1, True)
    assert backend.running() == [replacement.handle]


def test_scaling_down_drains_a_ready_worker_out_of_the_table_before_stopping_it(
    owner: User, backend: MemoryBackend
) -> None:
    deployment = _serving(owner, backend, replicas=2)
    scale_variant(variant=deployment.variants.get(), replicas=1, actor=owner)
    _pass(deployment)
    assert _states(deployment) == ["draining", "ready"]
    assert len(build_routing_table().deployments["fraud"].variants[0].replicas) == 1
    draining = Worker.objects.get(state=WorkerState.DRAINING)
    assert backend.workers[draining.handle].running  # still finishing what it holds
    _pass(deployment)
    assert _states(deployment) == ["ready"]
    assert backend.workers[draining.handle].stopped_with_grace_s is not None


def test_a_new_configuration_rolls_new_workers_first_and_drains_the_old_once_they_are_ready(
    owner: User, backend: MemoryBackend
) -> None:
    deployment = _serving(owner, backend, replicas=2)
    old = set(backend.running())
    update_batching(
        variant=deployment.variants.get(),
        batching={"max_batch_size": 8, "preferred_batch_sizes": [4, 8]},
        actor=owner,
    )
    _pass(deployment)
    assert _states(deployment) == ["ready", "ready", "starting", "starting"]
    _pass(deployment)
    assert _states(deployment) == ["ready", "ready", "starting", "starting"]  # old ones keep serving
    backend.make_ready(*(set(backend.running()) - old))
    _pass(deployment)
    assert _states(deployment) == ["draining", "draining", "ready", "ready"]
    _pass(deployment)
    assert _states(deployment) == ["ready", "ready"]
    assert not any(backend.workers[h].running for h in old)


def test_workers_that_outlived_a_platform_restart_are_adopted_not_duplicated(
    owner: User, backend: MemoryBackend
) -> None:
    deployment = _serving(owner, backend, replicas=2)
    before = set(backend.running())
    for _ in range(3):
        _pass(deployment)  # every pass is a fresh reconciler, as after a restart
    assert set(backend.running()) == before
    assert _states(deployment) == ["ready", "ready"]


def test_a_worker_no_row_knows_is_stopped_as_an_orphan(owner: User, backend: MemoryBackend) -> None:
    deployment = _serving(owner, backend, replicas=1)
    (known,) = backend.running()
    orphan = backend.orphan()
    assert stop_orphans() >= 1
    assert not backend.workers[orphan].running
    assert backend.workers[known].running
    assert _states(deployment) == ["ready"]


def test_deleting_is_desired_state_the_loop_drains_stops_and_then_deletes_the_row(
    owner: User, backend: MemoryBackend
) -> None:
    deployment = _serving(owner, backend, replicas=2)
    handles = backend.running()
    delete_deployment(deployment=deployment, actor=owner)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.DELETING
    assert "fraud" not in build_routing_table().deployments  # no traffic from the moment it is asked
    assert all(backend.workers[h].running for h in handles)  # the request itself touches no worker
    _pass(deployment)
    assert _states(deployment) == ["draining", "draining"]
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    _pass(deployment)
    assert not any(backend.workers[h].running for h in handles)
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert _actions(deployment)[-2:] == ["deployment.delete_requested", "deployment.deleted"]
    deleted = AuditEvent.objects.get(action="deployment.deleted")
    assert deleted.actor == owner


def test_asking_twice_to_delete_changes_nothing_and_changes_to_a_deployment_being_deleted_are_refused(
    owner: User, backend: MemoryBackend
) -> None:
    from deployments.errors import DeploymentBusyError

    deployment = _serving(owner, backend, replicas=1)
    delete_deployment(deployment=deployment, actor=owner)
    delete_deployment(deployment=deployment, actor=owner)
    assert _actions(deployment).count("deployment.delete_requested") == 1
    with pytest.raises(DeploymentBusyError):
        remove_variant(variant=deployment.variants.get(), actor=owner)


def test_removing_a_variant_drains_its_workers_then_deletes_it_and_the_other_keeps_serving(
    owner: User, backend: MemoryBackend
) -> None:
    deployment = _serving(
        owner,
        backend,
        variants=[
            {"name": "primary", "version": 1, "replicas": 1, "backend": "memory", "weight": 100},
            {"name": "canary", "version": 2, "replicas": 1, "backend": "memory", "weight": 0},
        ],
    )
    canary = deployment.variants.get(name="canary")
    remove_variant(variant=canary, actor=owner)
    names = [v.name for v in build_routing_table().deployments["fraud"].variants]
    assert names == ["primary"]
    _pass(deployment)
    assert _states(deployment, "canary") == ["draining"]
    _pass(deployment)
    assert not Variant.objects.filter(pk=canary.pk).exists()
    assert _states(deployment, "primary") == ["ready"]
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SERVING
    assert _actions(deployment)[-2:] == ["variant.remove_requested", "variant.removed"]


def test_a_silent_worker_turns_unhealthy_and_is_then_replaced(
    owner: User, backend: MemoryBackend, settings: Any
) -> None:
    deployment = _serving(owner, backend, replicas=1)
    (handle,) = backend.running()
    long_ago = timezone.now() - timedelta(seconds=settings.KILN_WORKER_STALE_S + 1)
    Worker.objects.filter(handle=handle).update(last_heartbeat=long_ago)
    _pass(deployment)
    assert _states(deployment) == ["unhealthy"]
    much_longer_ago = long_ago - timedelta(seconds=settings.KILN_WORKER_REPLACE_AFTER_S + 1)
    Worker.objects.filter(handle=handle).update(last_heartbeat=much_longer_ago)
    _pass(deployment)
    assert not backend.workers[handle].running
    assert _states(deployment) == ["starting"]


def test_a_start_the_backend_refuses_is_a_death_with_the_reason(owner: User, backend: MemoryBackend) -> None:
    backend.refuse_starts = "engine says no"
    deployment = _deploy(owner, replicas=1)
    _pass(deployment)
    stopped = Worker.objects.get(variant__deployment=deployment, state=WorkerState.STOPPED)
    assert "could not start: engine says no" in stopped.last_error


def test_the_api_refuses_changes_to_a_deployment_being_deleted_but_accepts_a_second_delete(
    owner: User, backend: MemoryBackend, api_as: Any
) -> None:
    deployment = _serving(owner, backend, replicas=1)
    api = api_as(owner)
    first = api.delete("/api/v1/deployments/fraud/")
    assert first.status_code == 202
    assert first.json()["status"] == "deleting"
    assert api.delete("/api/v1/deployments/fraud/").status_code == 202
    scaled = api.post("/api/v1/deployments/fraud/variants/primary/scale/", {"replicas": 2}, format="json")
    assert scaled.status_code == 409
    assert "being deleted" in scaled.json()["message"]
    again = api.post(
        "/api/v1/deployments/",
        {"name": "fraud", "model": "cnn", "variants": [{"version": 1, "backend": "memory"}]},
        format="json",
    )
    assert again.status_code == 409
    assert "being deleted" in again.json()["message"]
    _pass(deployment)
    _pass(deployment)
    assert api.get("/api/v1/deployments/fraud/").status_code == 404
