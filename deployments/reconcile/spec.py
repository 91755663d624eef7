"""What a worker of a variant runs: the fingerprint that decides a rolling update, and its launch spec."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from django.conf import settings

from deployments.backends import ServiceSpec, WorkerSpec
from deployments.backends.base import TASK_ID
from deployments.models import Deployment, ImageStatus, Variant, Worker
from inference_worker.contracts.batching import BATCHING, INTRA_OP_THREADS, BatchingConfig
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.labels import labels_text, parse_labels
from inference_worker.contracts.launch import LaunchSpec
from inference_worker.contracts.warmup import REPORT_KEY, parse_warmup, warmup_text
from registry import storage
from registry.models import ModelVersion

logger = logging.getLogger(__name__)
ADDED_OPTIONS = (INTRA_OP_THREADS.name,)
"""Batching options added after the first fingerprints were taken: hashed only when set."""


def spec_hash(variant: Variant) -> str:
    """A fingerprint of everything that needs a new worker when it changes.

    The batching options are listed in the option table's order. Options the table gained
    later (``ADDED_OPTIONS``) appear by name only when set, so running workers do not roll
    when the platform learns one; a value set later rolls them, as any change does.
    """
    values = variant.batching.values()
    data: dict[str, object] = {
        "version": variant.version_id,
        "onnx": variant.version.onnx_sha256,
        "batching": [value for name, value in values.items() if name not in ADDED_OPTIONS],
        "gpu_ids": sorted(variant.gpu_ids),
        "backend": variant.backend,
        "image": variant.image,
    }
    data.update({name: values[name] for name in ADDED_OPTIONS if values[name] != BATCHING[name].default})
    if variant.version.class_labels:  # a change of the version's labels rolls its workers
        data["class_labels"] = variant.version.class_labels
    if variant.placement_constraints or variant.placement_spread:  # absent: earlier hashes stay valid
        data["placement"] = [sorted(variant.placement_constraints), list(variant.placement_spread)]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ImagePick:
    """Whether the variant's workers can start now (their image is ready), and why not."""

    ready: bool
    problem: str = ""
    failed: bool = False


def pick_image(variant: Variant) -> ImagePick:
    """Run the image the image service says is ready (a new one rolls the workers); else wait for it."""
    from deployments.services.images import image_for_variant

    tag, wanted = image_for_variant(variant=variant)
    if tag and tag != variant.image:
        Variant.objects.filter(pk=variant.pk).update(image=tag)
        variant.image = tag
    if tag is not None:
        return ImagePick(ready=True)
    if wanted.status == ImageStatus.FAILED:
        return ImagePick(
            ready=False, failed=True, problem=f"the worker image {wanted.tag} failed to build: {wanted.error}"
        )
    return ImagePick(ready=False, problem=f"variant {variant.name}: building the worker image {wanted.tag}")


def service_spec(*, deployment: Deployment, variant: Variant, replicas: int) -> ServiceSpec:
    """The service a backend that owns placement runs for ``variant``: every replica's shared launch spec."""
    return ServiceSpec(
        variant_id=variant.pk,
        replicas=replicas,
        spec_hash=spec_hash(variant),
        worker=_launch(
            deployment=deployment,
            variant=variant,
            worker_id=0,
            report_url=f"{settings.KILN_PUBLIC_URL}/api/v1/tasks/{TASK_ID}/reports/",
            token="",
        ),
        constraints=tuple(variant.placement_constraints),
        spread=tuple(variant.placement_spread),
    )


def worker_spec(*, deployment: Deployment, variant: Variant, worker: Worker, token: str) -> WorkerSpec:
    """The launch spec of ``worker``; replacements share the variant's spec, hence its version."""
    return _launch(
        deployment=deployment,
        variant=variant,
        worker_id=worker.pk,
        report_url=f"{settings.KILN_PUBLIC_URL}/api/v1/workers/{worker.pk}/reports/",
        token=token,
    )


def _launch(
    *, deployment: Deployment, variant: Variant, worker_id: int, report_url: str, token: str
) -> WorkerSpec:
    return version_worker_spec(
        version=variant.version,
        deployment=deployment.name,
        variant=variant.name,
        batching=variant.batching,
        gpu_ids=tuple(variant.gpu_ids),
        image=variant.image,
        worker_id=worker_id,
        report_url=report_url,
        token=token,
    )


def version_worker_spec(
    *,
    version: ModelVersion,
    deployment: str,
    variant: str,
    batching: BatchingConfig,
    worker_id: int,
    report_url: str,
    token: str,
    gpu_ids: tuple[int, ...] = (),
    image: str = "",
) -> WorkerSpec:
    """A worker serving ``version`` as ``deployment`` with ``batching``: a variant's, or (no report URL)
    one the serving advice measures."""
    return WorkerSpec(
        worker_id=worker_id,
        deployment=deployment,
        variant=variant,
        onnx_path=storage.resolve(version.onnx_path),
        gpu_ids=gpu_ids,
        launch=LaunchSpec(
            model_name=deployment,
            model_version=str(version.version),
            model_sha256=version.onnx_sha256,
            batching=batching,
            report_url=report_url,
            report_token=token,
            report_interval_s=settings.KILN_REPORT_INTERVAL_S,
            worker_id=str(worker_id),
            warmup_inputs=_warmup(version.report),
            class_labels=_labels(version.class_labels),
        ),
        image=image,
        labels={"deployment": deployment, "variant": variant, "version": str(version.version)},
    )


def _labels(recorded: object) -> str:
    """The version's class labels for the worker's classification answers ("" when none)."""
    if not recorded:
        return ""
    try:
        return labels_text(parse_labels(recorded))
    except ContractError as exc:  # checked at upload: only a row changed by hand gets here
        logger.warning("ignoring the version's class labels: %s", exc)
        return ""


def _warmup(report: object) -> str:
    """The shapes the version's conversion validated, for the worker's warm-up ("" when none recorded)."""
    recorded = report.get(REPORT_KEY) if isinstance(report, dict) else None
    if recorded is None:
        return ""
    try:
        return warmup_text(parse_warmup(recorded))
    except ContractError as exc:  # an unreadable record: the worker's own warm-up, logged
        logger.warning("ignoring the recorded warm-up inputs: %s", exc)
        return ""
