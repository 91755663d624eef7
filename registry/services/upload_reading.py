"""What registration reads from an upload: the sandboxed child's inspection (which folds an ONNX
model's external data file into the model first) and the version's signature, declared or read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings

from registry.errors import InvalidArtifactError, InvalidSignatureError
from registry.sandbox import SandboxError, run_child
from registry.signature import (
    Signature,
    check_compatible,
    check_inputs_fed,
    check_names_apart,
    parse_signature,
)


def inspect_upload(
    fmt: str, path: Path, external_data: Path | None = None, folded: Path | None = None
) -> dict[str, Any]:
    """What the sandboxed child reads from the artifact; with ``external_data`` (an ONNX model's data
    file) it first folds the two into one file at ``folded``."""
    request: dict[str, Any] = {"format": fmt, "path": str(path)}
    if external_data is not None:
        request.update(
            external_data=str(external_data),
            inlined_path=str(folded),
            max_bytes=settings.KILN_MAX_UNPACKED_BYTES,
        )
    try:
        return run_child(
            "inspect",
            request,
            timeout_s=settings.KILN_INSPECT_TIMEOUT_S,
            memory_mb=settings.KILN_CONVERT_MEMORY_MB,
            threads=1,
        )
    except SandboxError as exc:
        code = exc.code if exc.code in {"invalid_artifact", "external_data_refused"} else "invalid_artifact"
        if exc.code == "invalid_signature":
            raise InvalidSignatureError(exc.message) from None
        raise InvalidArtifactError(exc.message, code=code) from None


def _example_dtype(argument: str) -> str:
    """The dtype an example signature gives ``argument``: int64 where its name says it holds token
    ids, indices or a mask (``input_ids``, ``attention_mask``: Hugging Face's names), else float32."""
    words = argument.lower()
    indexing = words.endswith(("ids", "index", "indices")) or "mask" in words or "token" in words
    return "int64" if indexing else "float32"


def resolve_signature(fmt: str, declared_raw: Any, inspected: dict[str, Any]) -> Signature:
    """The version's signature: declared for TorchScript, read from the artifact otherwise."""
    if fmt == "torchscript":
        arguments = inspected.get("forward_arguments", [])
        required = inspected.get("forward_required", len(arguments))
        if declared_raw in (None, "", {}):
            named = arguments[:required] or ["x"]
            example = {"inputs": [{"name": a, "dtype": _example_dtype(a), "shape": [-1, 16]} for a in named]}
            raise InvalidSignatureError(
                "signature: required for TorchScript uploads (a TorchScript file does not record its "
                f"inputs' types and shapes): one per argument of forward({', '.join(arguments)}) "
                "(those with a default may be left out), -1 for a dynamic dimension, for example "
                f"{json.dumps(example)}"
            )
        declared = parse_signature(declared_raw)
        if not required <= len(declared.inputs) <= len(arguments):
            takes = f"{required} to {len(arguments)}" if required < len(arguments) else str(required)
            raise InvalidSignatureError(
                f"signature.inputs: {len(declared.inputs)} declared, but forward() takes "
                f"{takes} ({', '.join(arguments)})"
            )
        check_inputs_fed(declared)
        check_names_apart(declared)
        strings = [spec.name for spec in (*declared.inputs, *declared.outputs) if spec.dtype == "string"]
        if strings:
            raise InvalidSignatureError(
                f"signature: {strings[0]!r} is declared string, but a PyTorch model has no string tensors "
                "(an ONNX model may take or answer strings)"
            )
        return declared
    actual = parse_signature(inspected["signature"], require_outputs=True)
    if declared_raw not in (None, "", {}):
        check_compatible(parse_signature(declared_raw), actual)
    check_inputs_fed(actual)
    return actual
