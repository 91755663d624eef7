"""Export PyTorch artifacts to ONNX inside the sandboxed child. Pure: no Django.

TorchScript archives go through the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``) with ``dynamic_axes``; ``.pt2`` programs
through the ``torch.export``-based one (``dynamo=True``), whose dynamic dimensions
come from the program itself: a program saved without ``dynamic_shapes`` has its
batch size baked in and cannot be made dynamic again afterwards (its reshapes were
specialised), so it stays fixed and the caller records a warning.

Exporter failures become a ``ChildError`` (code ``export_failed``) whose message
names the unsupported operator when torch's error says which one it is.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.conversion.channel import ChildError
from registry.conversion.program_trees import read_unknown_as_dicts

# Warnings every export emits and nobody can act on.
_NOISE = (
    "legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "no signature found for",
    "torchvision is not installed",
)
_NOISY_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_MAX_WARNINGS = 10
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TORCHSCRIPT_UNSUPPORTED = re.compile(
    r"Exporting the operator '?([\w:.]+)'? to ONNX opset version (\d+) is not supported"
)
_TORCHSCRIPT_UNSUPPORTED_OLD = re.compile(r"Unsupported: ONNX export of operator ([\w:.]+)")
_DYNAMO_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'")
_DYNAMO_NODE = re.compile(r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]")


@dataclass(frozen=True)
class DimRange:
    """The sizes a ``.pt2`` program accepts for one symbolic dimension (``upper`` None: unbounded)."""

    lower: int
    upper: int | None

    def clamp(self, size: int) -> int:
        size = max(size, self.lower, 1)
        return size if self.upper is None else min(size, self.upper)

    def allows(self, size: int) -> bool:
        return size >= self.lower and (self.upper is None or size <= self.upper)


def load_torchscript(path: str) -> Any:
    """Open a TorchScript archive in eval mode (``invalid_artifact`` when it cannot be opened)."""
    import torch

    try:
        with quiet_warnings():  # torch.jit.load is deprecated in favour of torch.export
            module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ChildError(
            f"TorchScript archive cannot be opened: {first_line(exc)}", "invalid_artifact"
        ) from None
    module.eval()
    return module


def load_program(path: str) -> Any:
    """Open a ``torch.export`` program (``invalid_artifact`` when it cannot be opened); containers
    of types this platform lacks (a Hugging Face ``ModelOutput``) open as dicts."""
    import torch

    unreadable = read_unknown_as_dicts(path)
    try:
        with quiet_warnings():
            return torch.export.load(path)
    except Exception as exc:
        reason = first_line(exc)
        if unreadable:
            reason = (
                f"its inputs or outputs are held in {', '.join(unreadable[:3])}, a Python type this "
                "platform does not have and will not import: export a model that takes and returns "
                "tensors, tuples, lists or dicts (a Hugging Face model: return_dict=False)"
            )
        raise ChildError(f"torch.export program cannot be opened: {reason}", "invalid_artifact") from None


def program_input_dims(program: Any) -> list[list[int | DimRange]]:
    """For each user input of ``program``, per dimension: its size if static, its range if symbolic."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs: list[list[int | DimRange]] = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val")
        dims: list[int | DimRange] = []
        for dim in getattr(value, "shape", ()):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            bounds = program.range_constraints.get(getattr(dim.node, "expr", None))
            if bounds is None:  # a derived size (s0 * 2): accept any, torch checks it
                dims.append(DimRange(lower=0, upper=None))
            else:
                dims.append(DimRange(lower=_finite(bounds.lower) or 0, upper=_finite(bounds.upper)))
        inputs.append(dims)
    return inputs


def _finite(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def export_torchscript(
    module: Any,
    sample: Sequence[Any],
    *,
    output_path: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int | None,
) -> list[str]:
    """Export a ScriptModule with the TorchScript-based exporter; returns the warnings worth keeping."""
    import torch

    # The exporter prints the whole TorchScript graph on failure: keep it off the progress channel.
    with record_warnings() as caught, contextlib.redirect_stdout(sys.stderr):
        try:
            torch.onnx.export(
                module,
                tuple(sample),
                output_path,
                dynamo=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
                opset_version=opset,
                do_constant_folding=True,
                verbose=False,
            )
        except Exception as exc:
            raise_if_out_of_memory(exc, "exporting to ONNX")
            raise ChildError(explain_export_error(exc, "TorchScript-based"), "export_failed") from None
    return caught


def export_program(
    program: Any,
    sample: Sequence[Any],
    *,
    output_path: str,
    input_names: Sequence[str],
    output_names: Sequence[str] | None,
    opset: int | None,
) -> list[str]:
    """Export a ``torch.export`` program with the ``torch.export``-based exporter; returns warnings."""
    import torch

    with record_warnings() as caught:
        try:
            onnx_program = torch.onnx.export(
                program,
                tuple(sample),
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names) if output_names else None,
                opset_version=opset,
                optimize=True,
                verify=False,
                report=False,
                verbose=False,
            )
            if onnx_program is None:  # pragma: no cover - only when f= is given
                raise RuntimeError("the exporter returned no ONNX program")
            onnx_program.save(output_path, external_data=False)
        except Exception as exc:
            raise_if_out_of_memory(exc, "exporting to ONNX")
            raise ChildError(explain_export_error(exc, "torch.export-based"), "export_failed") from None
    return caught


def explain_export_error(exc: BaseException, exporter: str) -> str:
    """A message a user can act on: the unsupported operator when torch names one."""
    text = _ANSI.sub("", "\n".join(_exception_chain_text(exc)))
    # The torch.export-based exporter covers operators the TorchScript-based one lacks
    # (nn.TransformerEncoder's fast path, for one): a TorchScript upload is told of .pt2.
    instead = (
        "upload the model as a torch.export program (.pt2), whose exporter covers more operators, "
        if exporter == "TorchScript-based"
        else ""
    ) + "or export the model to ONNX yourself and upload the .onnx file"
    match = _TORCHSCRIPT_UNSUPPORTED.search(text)
    if match:
        return (
            f"the operator {match.group(1)} cannot be exported to ONNX opset {match.group(2)} by the "
            f"{exporter} exporter; replace it in the model ({instead})"
        )
    match = _TORCHSCRIPT_UNSUPPORTED_OLD.search(text) or _DYNAMO_NO_FUNCTION.search(text)
    if match:
        return (
            f"the operator {match.group(1)} is not supported by the {exporter} ONNX exporter; replace "
            f"it in the model ({instead})"
        )
    match = _DYNAMO_NODE.search(text)
    if match:
        return f"the {exporter} ONNX exporter failed on the operator {match.group(1)}: {_root_cause(exc)}"
    return f"the {exporter} ONNX exporter failed: {type(exc).__name__}: {first_line(exc)}"


def _exception_chain_text(exc: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        current = current.__cause__ or current.__context__


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost exception in the chain (the dynamo exporter wraps it twice)."""
    innermost = exc
    seen: set[int] = set()
    while id(innermost) not in seen:
        seen.add(id(innermost))
        nxt = innermost.__cause__ or innermost.__context__
        if nxt is None:
            break
        innermost = nxt
    return f"{type(innermost).__name__}: {first_line(innermost)}"


# Messages that start with a generic header and end with the cause, after a traceback.
_TORCHSCRIPT_HEADER = "The following operation failed in the TorchScript interpreter."


def first_line(exc: BaseException) -> str:
    """The line of an exception's message that says what went wrong, without colour codes, capped:
    the first non-empty one, except for TorchScript's interpreter errors, whose first line is a
    generic header and whose cause (``RuntimeError: Given groups=1 ... 3 channels, but got 1``)
    is the last line, after the TorchScript traceback."""
    text = _ORT_NOISE.sub("", _ANSI.sub("", str(exc)))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0] == _TORCHSCRIPT_HEADER and len(lines) > 1:
        return f"{lines[-1][:500]} (in the TorchScript interpreter)"
    return lines[0][:500]


_ORT_NOISE = re.compile(
    r"\[ONNXRuntimeError\] : \d+ : \w+ : "  # the status code's header
    r"|Load model from \S+ failed:"  # the sandbox's path
    r"|/onnxruntime_src/\S+:\d+ (?:[\w:~<>,&*\s]+\([^()]*\)(?: const)? )?"  # the C++ file and function
)
"""What ONNX Runtime puts before its message: the first line is then the message itself."""


_OOM_MARKERS = ("can't allocate memory", "not enough memory", "bad_alloc", "Failed to allocate memory")


def raise_if_out_of_memory(exc: BaseException, stage: str) -> None:
    """Turn an allocator failure (torch and ORT raise RuntimeError) into an ``out_of_memory`` error."""
    if isinstance(exc, MemoryError) or any(marker in str(exc) for marker in _OOM_MARKERS):
        raise ChildError(
            f"ran out of memory while {stage}{_memory_limit_text()}; the model or the batch is too large "
            "for the conversion memory limit",
            "out_of_memory",
        ) from None


def _memory_limit_text() -> str:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return "" if soft == resource.RLIM_INFINITY else f" (limit {soft // (1024 * 1024)} MB)"


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence warnings torch emits while loading or running models (the test suite errors on them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def record_warnings() -> Iterator[list[str]]:
    """Collect distinct, actionable warning messages (deprecation noise dropped) into a list."""
    kept: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield kept
        finally:
            for item in caught:
                message = first_line(Warning(str(item.message)))
                if issubclass(item.category, _NOISY_CATEGORIES) or any(n in message for n in _NOISE):
                    continue
                if message not in kept and len(kept) < _MAX_WARNINGS:
                    kept.append(message)
