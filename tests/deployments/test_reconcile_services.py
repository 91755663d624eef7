"""The reconcile loop on a backend that owns placement, pass by pass, with the test as the orchestrator:
tasks mirrored in rows, addresses from reports, deaths and crash loops, drain before stop, rolling
updates and rollbacks, pending placement, deletion and orphans. Real database, no engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.inputs import VariantSpec, VersionTarget
from deployments.models import Deployment, DeploymentStatus, Worker, WorkerState
from deployments.reconcile import reconcile_deployment, stop_orphans
from deployments.services.deployments import create_deployment, delete_deployment
from deployments.services.routing import build_routing_table
from deployments.services.variants import scale_variant, set_variant_version, update_batching
from registry.models import AuditEvent, RegisteredModel
from tests.support.memory_backend import MemoryServiceBackend, memory_service_backend
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def swarm(settings: Any) -> Iterator[MemoryServiceBackend]:
    settings.KILN_CRASHLOOP_RESTARTS = 2
    with memory_service_backend() as installed:
        yield installed


def _deploy(owner: User, *, replicas: int = 2, **variant: Any) -> Deployment:
    ready_version(owner, number=1)
    ready_version(owner, number=2)
    return create_deployment(
        name="fraud",
        model=RegisteredModel.objects.get(name="cnn"),
        variants=[
            VariantSpec.parse(
                {"name": "primary", "version": 1, "replicas": replicas, "backend": "memory-swarm", **variant}
            )
        ],
        actor=owner,
    )


def _pass(deployment: Deployment) -> bool:
    return reconcile_deployment(deployment.pk)


def _rows(deployment: Deployment) -> list[tuple[str, int | None, str]]:
    """(state, slot, node) of every row not stopped, by slot."""
    rows = Worker.objects.filter(variant__deployment=deployment).exclude(state=WorkerState.STOPPED)
    return sorted((w.state, w.slot, w.node) for w in rows)


def _routed(name: str = "fraud") -> list[str]:
    routed = build_routing_table().deployments.get(name)
    return sorted(r.url for v in routed.variants for r in v.replicas) if routed else []


@pytest.fixture
def report(api_client: APIClient, swarm: MemoryServiceBackend) -> Callable[..., int]:
    """A task's worker reports through the API with its service's token; returns the HTTP status."""

    def send(handle: str, *, state: str = "ready", port: int = 40000, token: str | None = None) -> int:
        service = next(s for s in swarm.services.values() if any(t.handle == handle for t in s.tasks))
        body = {
            "schema": "kiln.worker-report/v1",
            "state": state,
            "listen": {"http_port": port, "grpc_port": port + 1},
            "interval": {"start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:00:01Z"},
            "window": {"requests": 0},
        }
        response = api_client.post(
            f"/api/v1/tasks/{handle}/reports/",
            body,
            format="json",
            HTTP_AUTHORIZATION=f"Bearer {token or service.token}",
        )
        return response.status_code

    return send


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def _serving(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int], **kwargs: Any
) -> Deployment:
    deployment = _deploy(owner, **kwargs)
    _pass(deployment)  # the service is written
    swarm.schedule()
    _pass(deployment)  # its tasks get rows
    for number, task in enumerate(swarm.live()):
        task.ready = True
        assert report(task.handle, port=41000 + 10 * number) == 202
    _pass(deployment)
    return deployment


def test_tasks_become_rows_with_their_node_and_slot_and_are_routed_at_the_address_their_report_gave(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _deploy(owner, replicas=2)
    _pass(deployment)
    (service,) = swarm.services.values()
    assert (
        service.replicas,
        service.spec.worker.launch.report_url.endswith("/api/v1/tasks/{task_id}/reports/"),
    ) == (2, True)
    assert Worker.objects.count() == 0  # the orchestrator has placed nothing yet
    swarm.schedule()
    _pass(deployment)
    assert _rows(deployment) == [("starting", 1, "node-a"), ("starting", 2, "node-b")]
    assert _routed() == []
    first, second = swarm.live()
    first.ready = second.ready = True
    assert report(first.handle, port=41000) == 202
    _pass(deployment)
    assert _rows(deployment) == [("ready", 1, "node-a"), ("starting", 2, "node-b")]  # no report, no address
    assert report(second.handle, port=42000) == 202
    assert _pass(deployment)
    assert _routed() == ["http://10.0.0.1:41000", "http://10.0.0.2:42000"]
    assert Worker.objects.get(handle=second.handle).grpc_target == "10.0.0.2:42001"
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SERVING
    assert _pass(deployment) is False  # nothing to do: the service is not written again
    assert swarm.applied == 1


def test_a_task_report_with_another_services_token_or_for_an_unknown_task_is_refused(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int], api_client: APIClient
) -> None:
    _serving(owner, swarm, report, replicas=1)
    (task,) = swarm.live()
    assert report(task.handle, token="tok-999") == 401
    unknown = api_client.post(
        "/api/v1/tasks/nosuchtask/reports/", {}, format="json", HTTP_AUTHORIZATION="Bearer tok-1"
    )
    assert unknown.status_code == 401
    assert report(task.handle) == 202
    assert Worker.objects.get(handle=task.handle).last_report["listen"] == {
        "http_port": 40000,
        "grpc_port": 40001,
    }


def test_a_task_that_dies_leaves_its_error_for_the_replacement_in_its_slot_and_a_crash_loop_fails_the_variant(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=1)
    (first,) = swarm.live()
    swarm.crash(first.handle, error="task: non-zero exit (1)", line="RuntimeError: bad model (1)")
    _pass(deployment)
    dead = Worker.objects.get(handle=first.handle)
    assert dead.state == WorkerState.STOPPED
    assert "non-zero exit (1)" in dead.last_error
    assert "bad model (1)" in dead.last_error
    waiting = Worker.objects.get(variant__deployment=deployment, state=WorkerState.STARTING)
    assert (waiting.handle, waiting.slot, waiting.restarts) == ("", 1, 1)
    assert _routed() == []

    swarm.schedule()  # the orchestrator replaces the task in the same slot
    _pass(deployment)
    (second,) = swarm.live()
    waiting.refresh_from_db()
    assert (waiting.handle, waiting.restarts, waiting.node) == (second.handle, 1, second.node)
    assert "bad model (1)" in waiting.last_error

    swarm.crash(second.handle, line="RuntimeError: bad model (2)")
    _pass(deployment)
    swarm.schedule()
    _pass(deployment)
    (third,) = swarm.live()
    swarm.crash(third.handle, line="RuntimeError: bad model (3)")
    _pass(deployment)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.FAILED
    assert "bad model (3)" in deployment.status_reason
    assert Worker.objects.get(handle=third.handle).state == WorkerState.FAILED
    assert swarm.services == {}  # the crash loop ends: nothing left to restart
    _pass(deployment)
    assert swarm.services == {}
    assert AuditEvent.objects.filter(action="variant.failed").exists()


def test_a_replacement_listed_before_the_task_it_replaces_still_takes_over_its_row(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=1)
    (first,) = swarm.live()
    swarm.crash(first.handle, line="killed")
    swarm.schedule()  # the orchestrator saw the death and replaced the task before the next pass
    (service,) = swarm.services.values()
    service.tasks.reverse()  # and lists the replacement first
    _pass(deployment)
    (second,) = swarm.live()
    replacement = Worker.objects.get(handle=second.handle)
    assert (replacement.restarts, replacement.slot) == (1, 1)
    assert "killed" in replacement.last_error
    assert not Worker.objects.filter(handle="", state=WorkerState.STARTING).exists()


def test_a_death_between_two_passes_still_counts_but_old_history_does_not(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=1)
    (first,) = swarm.live()
    swarm.crash(first.handle)
    _pass(deployment)
    swarm.schedule()
    (second,) = swarm.live()
    swarm.crash(second.handle, error="task: non-zero exit (3)")  # started and died unseen
    _pass(deployment)
    unseen = Worker.objects.get(handle=second.handle)
    assert (unseen.state, unseen.restarts) == (WorkerState.STOPPED, 1)
    assert Worker.objects.get(state=WorkerState.STARTING, handle="").restarts == 2
    _pass(deployment)
    assert Worker.objects.filter(handle=first.handle).count() == 1  # history is not counted twice


def test_a_task_the_orchestrator_stops_leaves_the_routing_table_while_it_still_serves(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=2)
    assert len(_routed()) == 2
    scale_variant(variant=deployment.variants.get(), replicas=1, actor=owner)
    _pass(deployment)
    (service,) = swarm.services.values()
    assert service.replicas == 1
    swarm.schedule()  # the orchestrator picks the task to stop
    (going,) = [t for t in swarm.live() if t.desired == "shutdown"]
    assert going.state == "running"
    _pass(deployment)
    assert Worker.objects.get(handle=going.handle).state == WorkerState.DRAINING
    assert len(_routed()) == 1
    swarm.finish_stops()
    _pass(deployment)
    assert Worker.objects.get(handle=going.handle).state == WorkerState.STOPPED
    assert _rows(deployment) == [("ready", 1, "node-a")]


def test_a_worker_that_reports_draining_leaves_the_routing_table_before_the_orchestrator_says_so(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=2)
    first, _second = swarm.live()
    assert report(first.handle, state="draining", port=41000) == 202
    _pass(deployment)
    assert Worker.objects.get(handle=first.handle).state == WorkerState.DRAINING
    assert _routed() == ["http://10.0.0.2:41010"]


def test_a_new_version_rolls_through_the_orchestrator_new_tasks_first(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=2)
    old = {t.handle for t in swarm.live()}
    set_variant_version(variant=deployment.variants.get(), target=VersionTarget(version=2), actor=owner)
    _pass(deployment)
    (service,) = swarm.services.values()
    assert service.spec.worker.launch.model_version == "2"
    swarm.schedule()
    _pass(deployment)
    assert _rows(deployment) == [
        ("ready", 1, "node-a"),
        ("ready", 2, "node-b"),
        ("starting", 1, "node-a"),
        ("starting", 2, "node-b"),
    ]
    new = [t for t in swarm.live() if t.handle not in old]
    assert {Worker.objects.get(handle=t.handle).version.version for t in new} == {2}
    for number, task in enumerate(new):
        task.ready = True
        report(task.handle, port=43000 + 10 * number)
    _pass(deployment)
    assert len(_routed()) == 4  # both versions serve while the old tasks are still running
    swarm.schedule()  # the new tasks run: the orchestrator stops the old ones
    _pass(deployment)
    assert {Worker.objects.get(handle=h).state for h in old} == {WorkerState.DRAINING}
    assert _routed() == ["http://10.0.0.1:43000", "http://10.0.0.2:43010"]
    swarm.finish_stops()
    _pass(deployment)
    assert [state for state, _, _ in _rows(deployment)] == ["ready", "ready"]


def test_an_update_the_orchestrator_rolled_back_fails_the_deployment_until_the_variant_changes_again(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=1)
    set_variant_version(variant=deployment.variants.get(), target=VersionTarget(version=2), actor=owner)
    _pass(deployment)
    applied = swarm.applied
    (service,) = swarm.services.values()
    swarm.schedule()  # the new task starts first, and dies
    (new,) = [t for t in swarm.live() if t.version == 2]
    _pass(deployment)
    swarm.crash(new.handle, line="ConfigError: the model does not load")
    swarm.roll_back(service.spec.variant_id, "rollback completed")
    _pass(deployment)
    _pass(deployment)
    assert swarm.applied == applied  # not sent again
    assert "does not load" in Worker.objects.get(handle=new.handle).last_error
    assert _rows(deployment) == [("ready", 1, "node-a")]  # no replacement awaited for the failed one
    assert service.spec.worker.launch.model_version == "1"
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.FAILED
    assert "the swarm rolled the update back" in deployment.status_reason
    assert len(_routed()) == 1  # the earlier version keeps serving

    update_batching(
        variant=deployment.variants.get(),
        batching={"max_batch_size": 8, "preferred_batch_sizes": [8]},
        actor=owner,
    )
    _pass(deployment)
    assert swarm.applied == applied + 1  # a new configuration is tried
    assert service.rolled_back_from == ""
    deployment.refresh_from_db()
    assert deployment.status != DeploymentStatus.FAILED


def test_tasks_no_node_can_take_leave_the_variant_pending_with_the_orchestrators_reason(
    owner: User, swarm: MemoryServiceBackend
) -> None:
    deployment = _deploy(owner, replicas=2, placement={"constraints": ["node.labels.kiln.gpu==true"]})
    _pass(deployment)
    (service,) = swarm.services.values()
    assert service.spec.constraints == ("node.labels.kiln.gpu==true",)
    swarm.no_node = "no suitable node (scheduling constraints not satisfied on 2 nodes)"
    swarm.schedule()
    _pass(deployment)
    _pass(deployment)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.DEPLOYING
    assert deployment.status_reason == (
        "variant primary: 2 replica(s) pending: "
        "no suitable node (scheduling constraints not satisfied on 2 nodes)"
    )
    assert _rows(deployment) == [("starting", 1, ""), ("starting", 2, "")]


def test_placement_is_refused_for_a_backend_that_does_not_place_and_checked_for_syntax(owner: User) -> None:
    from deployments.errors import InvalidDeploymentError

    with pytest.raises(InvalidDeploymentError, match="only a backend that places replicas"):
        _deploy(owner, backend="process", placement={"constraints": ["node.role==worker"]})
    with memory_service_backend(), pytest.raises(InvalidDeploymentError, match="is not a constraint"):
        create_deployment(
            name="fraud2",
            model=RegisteredModel.objects.get(name="cnn"),
            variants=[
                VariantSpec.parse(
                    {"version": 1, "backend": "memory-swarm", "placement": {"constraints": ["rm -rf /"]}}
                )
            ],
            actor=owner,
        )


def test_deleting_scales_the_service_to_zero_then_removes_it_once_its_tasks_ended(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    deployment = _serving(owner, swarm, report, replicas=2)
    delete_deployment(deployment=deployment, actor=owner)
    _pass(deployment)
    (service,) = swarm.services.values()
    assert service.replicas == 0
    swarm.schedule()
    _pass(deployment)
    assert {w.state for w in Worker.objects.all()} == {WorkerState.DRAINING}
    assert Deployment.objects.filter(pk=deployment.pk).exists()  # still draining
    swarm.finish_stops()
    _pass(deployment)
    assert swarm.services == {}
    assert not Deployment.objects.filter(pk=deployment.pk).exists()


def test_a_service_no_variant_wants_is_removed_as_an_orphan(
    owner: User, swarm: MemoryServiceBackend, report: Callable[..., int]
) -> None:
    _serving(owner, swarm, report, replicas=1)
    (service,) = swarm.services.values()
    swarm.apply_service(service.spec.__class__(**{**service.spec.__dict__, "variant_id": 999}))
    assert stop_orphans() == 1
    assert sorted(swarm.services) == [service.spec.variant_id]
