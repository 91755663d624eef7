"""Check an ONNX file before it is trusted: checker, shape inference, ONNX Runtime load. Pure.

Every failure is a ``ChildError`` with code ``check_failed`` and the first line of
the reason (an ONNX upload with external data keeps ``external_data_refused``).
Strict shape inference is tried first; graphs it rejects although the lenient
mode accepts them (exporters emit a few such) pass with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.conversion.channel import ChildError
from registry.conversion.inspection import load_onnx_checked
from registry.conversion.onnx_export import first_line, raise_if_out_of_memory
from registry.conversion.profiling import make_session


@dataclass
class CheckedModel:
    """A model that passed every check, with the ONNX Runtime session opened on it."""

    model: Any
    session: Any
    opset: int
    warnings: list[str]


def check_onnx_file(path: str, *, threads: int) -> CheckedModel:
    """Run onnx.checker (full check), shape inference and an ONNX Runtime load on ``path``."""
    import onnx

    try:
        model = load_onnx_checked(path)
    except ChildError as exc:
        code = exc.code if exc.code == "external_data_refused" else "check_failed"
        raise ChildError(exc.message, code) from None
    notes: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ChildError(
            f"the ONNX model fails onnx.checker (full check): {first_line(exc)}", "check_failed"
        ) from None
    notes.extend(_infer_shapes(model))
    try:
        session = make_session(path, threads)
    except Exception as exc:
        raise_if_out_of_memory(exc, "loading the model in ONNX Runtime")
        raise ChildError(f"ONNX Runtime cannot load the model: {first_line(exc)}", "check_failed") from None
    return CheckedModel(model=model, session=session, opset=default_opset(model), warnings=notes)


def _infer_shapes(model: Any) -> list[str]:
    import onnx

    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as strict_error:
        try:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
        except onnx.shape_inference.InferenceError as exc:
            raise ChildError(f"ONNX shape inference fails: {first_line(exc)}", "check_failed") from None
        return [f"strict ONNX shape inference failed (lenient inference passed): {first_line(strict_error)}"]
    return []


def default_opset(model: Any) -> int:
    """The opset of the default (``ai.onnx``) domain, 0 when the model imports none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0
