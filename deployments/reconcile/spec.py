"""What a worker of a variant runs: the fingerprint that decides a rolling update, and its launch spec."""

from __future__ import annotations

import hashlib
import json

from django.conf import settings

from deployments.backends import WorkerSpec
from deployments.models import Deployment, Variant, Worker
from inference_worker.contracts.launch import LaunchSpec
from registry import storage


def spec_hash(variant: Variant) -> str:
    """A fingerprint of everything that needs a new worker when it changes.

    The batching options are listed in the option table's order, so a new option (a
    new flag for the worker) changes every fingerprint: the workers roll to get it.
    """
    data = {
        "version": variant.version_id,
        "onnx": variant.version.onnx_sha256,
        "batching": list(variant.batching.values().values()),
        "gpu_ids": sorted(variant.gpu_ids),
        "backend": variant.backend,
        "image": variant.image,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def worker_spec(*, deployment: Deployment, variant: Variant, worker: Worker, token: str) -> WorkerSpec:
    """The launch spec of ``worker``; replacements share the variant's spec, hence its version."""
    version = variant.version
    return WorkerSpec(
        worker_id=worker.pk,
        deployment=deployment.name,
        variant=variant.name,
        onnx_path=storage.resolve(version.onnx_path),
        gpu_ids=tuple(variant.gpu_ids),
        launch=LaunchSpec(
            model_name=deployment.name,
            model_version=str(version.version),
            model_sha256=version.onnx_sha256,
            batching=variant.batching,
            report_url=f"{settings.KILN_PUBLIC_URL}/api/v1/workers/{worker.pk}/reports/",
            report_token=token,
            report_interval_s=settings.KILN_REPORT_INTERVAL_S,
            worker_id=str(worker.pk),
        ),
        image=variant.image,
        labels={
            "deployment": deployment.name,
            "variant": variant.name,
            "version": str(version.version),
        },
    )
