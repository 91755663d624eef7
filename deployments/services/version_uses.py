"""What deployments answer when the registry deletes versions (``registry.hooks``).

``versions_in_use``: every deployment variant serving one of the versions (or pinned to it), every
deployment of the model when the whole model goes, workers still running one (starting, ready,
unhealthy, draining), and measurements or worker image builds of one in progress.
``versions_deleting``: drop the history that points at them: ended workers' rows, and the version of
finished rollouts (their records stay, naming no version). Worker image rows go with the versions,
and their images leave the engine after the commit (``image_cleanup``).
"""

from __future__ import annotations

from django.db.models import Q

from deployments.measure_models import ACTIVE_MEASUREMENT_STATES
from deployments.models import (
    ACTIVE_ROLLOUT_STATES,
    BUSY_WORKER_STATES,
    Deployment,
    ImageStatus,
    MeasurementRun,
    Rollout,
    Variant,
    Worker,
    WorkerImage,
)
from deployments.services.image_cleanup import forget_images_of

NAMED_WORKERS = 10
"""Running workers a refusal names one by one; it counts the rest."""


def versions_in_use(*, model_id: int, version_ids: list[int], whole_model: bool) -> list[str]:
    """Readable reasons these versions (or the model) cannot be deleted now; empty when none."""
    uses: list[str] = []
    if whole_model:
        names = Deployment.objects.filter(model_id=model_id).order_by("name").values_list("name", flat=True)
        uses += [f"deployment {name!r} serves the model" for name in names]
    serving = (
        Variant.objects.filter(Q(version_id__in=version_ids) | Q(pinned_version_id__in=version_ids))
        .select_related("deployment", "version", "pinned_version")
        .order_by("deployment__name", "name")
    )
    for variant in serving:
        if whole_model:
            continue  # its deployment is named already
        pinned = variant.pinned_version if variant.pinned_version_id in version_ids else None
        number = (pinned or variant.version).version
        how = "is pinned to" if pinned is not None else "serves"
        uses.append(f"deployment {variant.deployment.name!r} variant {variant.name!r} {how} v{number}")
    workers = Worker.objects.filter(version_id__in=version_ids, state__in=BUSY_WORKER_STATES).select_related(
        "variant__deployment", "version"
    )
    shown = list(workers.order_by("pk")[:NAMED_WORKERS])
    uses += [
        f"worker {w.pk} of deployment {w.variant.deployment.name!r} runs v{w.version.version} ({w.state})"
        for w in shown
    ]
    if len(shown) == NAMED_WORKERS and (more := workers.count() - NAMED_WORKERS):
        uses.append(f"and {more} more worker{'s' if more > 1 else ''}")
    runs = MeasurementRun.objects.filter(version_id__in=version_ids, status__in=ACTIVE_MEASUREMENT_STATES)
    uses += [
        f"a measurement of v{run.version.version} is {run.status}" for run in runs.select_related("version")
    ]
    builds = WorkerImage.objects.filter(
        version_id__in=version_ids, status__in=(ImageStatus.QUEUED, ImageStatus.BUILDING)
    )
    uses += [
        f"the worker image of v{b.version.version} is {b.status}" for b in builds.select_related("version")
    ]
    if not whole_model:  # the model's deployments are named already
        rollouts = Rollout.objects.filter(version_id__in=version_ids, state__in=ACTIVE_ROLLOUT_STATES)
        uses += [
            f"a rollout of v{r.version.version} in deployment {r.deployment.name!r} is {r.state}"
            for r in rollouts.select_related("version", "deployment")
            if r.version is not None
        ]
    return uses


def versions_deleting(*, version_ids: list[int]) -> None:
    """The versions go (nothing uses them): their ended workers' rows go, finished rollouts forget them,
    and their worker images leave the engine once the deletion commits."""
    forget_images_of(version_ids=version_ids)
    Worker.objects.filter(version_id__in=version_ids).exclude(state__in=BUSY_WORKER_STATES).delete()
    Rollout.objects.filter(version_id__in=version_ids).exclude(state__in=ACTIVE_ROLLOUT_STATES).update(
        version=None
    )
