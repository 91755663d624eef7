"""Rows for deployment tests: ready versions with a realistic report, without running a conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth.models import User

from registry import storage
from registry.models import ModelVersion, RegisteredModel
from tests.support.torch_models import save_onnx_cnn

PROFILE = {
    "dynamic_batch": True,
    "profile": {
        "provider": "CPUExecutionProvider",
        "threads": 2,
        "batches": [
            {"batch_size": 1, "onnxruntime_ms": 0.5},
            {"batch_size": 2, "onnxruntime_ms": 0.8},
            {"batch_size": 4, "onnxruntime_ms": 1.4},
            {"batch_size": 8, "onnxruntime_ms": 2.6},
            {"batch_size": 16, "onnxruntime_ms": 5.0},
            {"batch_size": 32, "onnxruntime_ms": 9.8},
            {"batch_size": 64, "onnxruntime_ms": 19.5},
        ],
    },
}


def ready_version(
    owner: User, *, model: str = "cnn", number: int = 1, status: str = "ready", **extra: Any
) -> ModelVersion:
    registered, _ = RegisteredModel.objects.get_or_create(name=model, defaults={"owner": owner})
    registered.latest_version = max(registered.latest_version, number)
    registered.save()
    digest = f"{number:064x}"
    return ModelVersion.objects.create(
        model=registered,
        version=number,
        source_format="onnx",
        source_sha256=digest,
        source_size=10,
        source_path=f"sha256/{digest[:2]}/{digest}",
        onnx_path=f"sha256/{digest[:2]}/{digest}",
        onnx_sha256=digest,
        created_by=owner,
        status=status,
        report=extra.pop("report", PROFILE),
        signature={
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 2]}],
        },
        **extra,
    )


def stored_version(
    owner: User,
    tmp_path: Path,
    *,
    model: str = "cnn",
    number: int = 1,
    seed: int = 0,
    input_name: str = "image",
    onnx_bytes: bytes | None = None,
) -> ModelVersion:
    """A converted version: a real ONNX file in the artifact store, status ready, with a profile."""
    path = tmp_path / f"{model}-{number}.onnx"
    signature = save_onnx_cnn(path, seed=seed)
    if input_name != "image":
        import onnx

        proto = onnx.load(str(path))
        for node in proto.graph.node:
            node.input[:] = [input_name if i == "image" else i for i in node.input]
        proto.graph.input[0].name = input_name
        onnx.save(proto, str(path))
        signature["inputs"][0]["name"] = input_name
    if onnx_bytes is not None:
        path.write_bytes(onnx_bytes)
    relative, digest, size, _ = storage.store_path(path)
    registered, _ = RegisteredModel.objects.get_or_create(name=model, defaults={"owner": owner})
    registered.latest_version = max(registered.latest_version, number)
    registered.save()
    return ModelVersion.objects.create(
        model=registered,
        version=number,
        source_format="onnx",
        source_sha256=digest,
        source_size=size,
        source_path=relative,
        onnx_path=relative,
        onnx_sha256=digest,
        onnx_size=size,
        signature=signature,
        status="ready",
        created_by=owner,
        report={
            "dynamic_batch": True,
            "profile": {
                "batches": [
                    {"batch_size": 1, "onnxruntime_ms": 0.3},
                    {"batch_size": 8, "onnxruntime_ms": 1.0},
                ]
            },
        },
    )
