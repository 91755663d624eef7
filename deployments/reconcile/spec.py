"""What a worker of a variant runs: the fingerprint that decides a rolling update, and its launch spec."""

from __future__ import annotations

import hashlib
import json

from django.conf import settings

from deployments.backends import WorkerSpec
from deployments.models import Deployment, Variant, Worker
from registry import storage


def spec_hash(variant: Variant) -> str:
    """A fingerprint of everything that needs a new worker when it changes."""
    data = {
        "version": variant.version_id,
        "onnx": variant.version.onnx_sha256,
        "batching": [
            variant.max_batch_size,
            variant.max_queue_delay_ms,
            sorted(variant.preferred_batch_sizes),
            variant.max_queue_size,
            variant.request_timeout_ms,
            variant.instances,
        ],
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
        model_name=deployment.name,
        model_version=version.version,
        onnx_path=storage.resolve(version.onnx_path),
        onnx_sha256=version.onnx_sha256,
        gpu_ids=tuple(variant.gpu_ids),
        max_batch_size=variant.max_batch_size,
        max_queue_delay_ms=variant.max_queue_delay_ms,
        preferred_batch_sizes=tuple(variant.preferred_batch_sizes),
        max_queue_size=variant.max_queue_size,
        request_timeout_ms=variant.request_timeout_ms,
        instances=variant.instances,
        report_url=f"{settings.KILN_PUBLIC_URL}/api/v1/workers/{worker.pk}/reports/",
        report_token=token,
        report_interval_s=settings.KILN_REPORT_INTERVAL_S,
        image=variant.image,
        labels={
            "deployment": deployment.name,
            "variant": variant.name,
            "version": str(version.version),
        },
    )
