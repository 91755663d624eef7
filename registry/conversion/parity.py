"""Random inputs drawn from a signature, and the numerical comparison of two runtimes. Pure.

Inputs: floats are standard normal, integers uniform in ``[0, int_high)`` (the
caller lowers ``int_high`` when a model rejects 100 as, say, an embedding index),
bools fair coin flips. A dynamic batch dimension takes the batch size being
checked; every other dynamic dimension takes ``DYNAMIC_DIM_SIZE``.

Comparison, per output, ``expected`` being the reference (PyTorch, or
``onnx.reference`` for ONNX uploads) and ``actual`` ONNX Runtime:

- pass criterion: ``numpy.isclose(actual, expected, atol, rtol, equal_nan=True)``
  everywhere, i.e. ``|actual - expected| <= atol + rtol * |expected|`` per element;
  integer and bool outputs must be equal;
- ``max_abs_error``: the largest ``|actual - expected|``;
- ``max_rel_error``: ``max_abs_error / max(|expected|)``, the error relative to the
  output's scale. An element-wise ratio would be dominated by elements that happen
  to be near zero, where float32 accumulation noise is relatively huge.

A float16 output is held to at least ``atol=1e-3, rtol=1e-2`` (``LEAST_TOLERANCE``): float16 keeps
11 significant bits, so two correct runtimes differ by about 1e-3 relative, past float32's
defaults; the report gives each output's tolerance.

Non-finite errors (a NaN or inf on one side only) are reported as ``None`` in the
JSON (PostgreSQL's jsonb refuses ``Infinity``) and counted as mismatches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from registry.conversion.channel import ChildError, progress
from registry.conversion.onnx_export import first_line, raise_if_out_of_memory

DYNAMIC_DIM_SIZE = 8
DEFAULT_BATCH_SIZES = (1, 3, 8)
INT_HIGHS = (100, 10, 2)

Array = npt.NDArray[Any]
LEAST_TOLERANCE: dict[str, tuple[float, float]] = {"float16": (1e-3, 1e-2)}
"""The least ``(atol, rtol)`` an output of a dtype is compared with, whatever the request asks."""
Feeds = dict[str, Array]
Runner = Callable[[Feeds], list[Array]]

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "string": np.object_,
}
STRING_VOCABULARY = 16
"""How many distinct words a string input is drawn from."""


@dataclass(frozen=True)
class TensorSpec:
    """One signature entry. (Not ``registry.signature.TensorSpec``: that module imports Django.)"""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TensorSpec:
        return cls(name=str(raw["name"]), dtype=str(raw["dtype"]), shape=tuple(int(d) for d in raw["shape"]))


def specs_from_signature(signature: Mapping[str, Any], field_name: str) -> list[TensorSpec]:
    """The ``inputs`` or ``outputs`` of a JSON signature as specs."""
    return [TensorSpec.from_dict(item) for item in signature.get(field_name) or []]


def has_dynamic_batch(specs: Sequence[TensorSpec]) -> bool:
    """True when every input's first dimension is dynamic (the signature's batch convention)."""
    return bool(specs) and all(spec.shape and spec.shape[0] == -1 for spec in specs)


def concrete_shape(spec: TensorSpec, batch_size: int) -> tuple[int, ...]:
    """The shape to draw: dim 0 = ``batch_size`` when dynamic, other dynamic dims ``DYNAMIC_DIM_SIZE``."""
    return tuple(
        (batch_size if index == 0 else DYNAMIC_DIM_SIZE) if dim == -1 else dim
        for index, dim in enumerate(spec.shape)
    )


def draw_inputs(specs: Sequence[TensorSpec], batch_size: int, *, seed: int, int_high: int) -> Feeds:
    """Random inputs for one batch, reproducible from ``(seed, batch_size)``."""
    rng = np.random.default_rng([abs(seed), batch_size])
    feeds: Feeds = {}
    for spec in specs:
        shape = concrete_shape(spec, batch_size)
        dtype = _NUMPY_DTYPES.get(spec.dtype)
        if dtype is None:
            raise ChildError(
                f"input {spec.name!r} has dtype {spec.dtype}, which cannot be fed to ONNX Runtime from "
                "numpy; declare a float32 input and cast inside the model",
                "invalid_signature",
            )
        if spec.dtype == "bool":
            feeds[spec.name] = rng.random(shape) < 0.5
        elif spec.dtype == "string":  # words of a small vocabulary, some repeated, one empty
            words = np.array(["", *(f"word{i}" for i in range(STRING_VOCABULARY - 1))], dtype=object)
            feeds[spec.name] = words[rng.integers(0, STRING_VOCABULARY, size=shape)]
        elif spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = rng.integers(0, int_high, size=shape).astype(dtype)
    return feeds


class NotApplicableError(Exception):
    """The reference cannot be run (an ONNX upload that onnx.reference cannot evaluate)."""


def probe_int_high(
    runner: Runner, inputs: Sequence[TensorSpec], *, seed: int, batch_size: int, label: str, code: str
) -> tuple[int, list[Array]]:
    """Run ``runner`` on one sample batch; returns the integer range that worked and the outputs.

    Integer inputs are often indices (embeddings, one-hot), which a model rejects when
    they exceed its table: ``[0, 100)`` is tried first, then smaller ranges.
    """
    integer = any(not spec.dtype.startswith(("float", "bool", "bfloat")) for spec in inputs)
    highs = INT_HIGHS if integer else INT_HIGHS[:1]
    first_error: Exception | None = None
    for high in highs:
        feeds = draw_inputs(inputs, batch_size, seed=seed, int_high=high)
        try:
            return high, runner(feeds)
        except ChildError:
            raise
        except Exception as exc:
            raise_if_out_of_memory(exc, f"running {label} on sample inputs")
            first_error = first_error or exc
    tried = f"; integers drawn from {', '.join(f'[0, {h})' for h in highs)}" if integer else ""
    raise ChildError(
        f"{label} fails on random inputs drawn from the signature (batch size {batch_size}{tried}): "
        f"{type(first_error).__name__}: {first_line(first_error)}"
        if first_error
        else "",
        code,
    )


@dataclass
class OutputCheck:
    """How one output of one batch compared."""

    name: str
    dtype: str
    batch_size: int
    passed: bool
    max_abs_error: float
    max_rel_error: float
    mismatched: int
    elements: int
    worst: str = ""
    atol: float = 0.0
    rtol: float = 0.0
    """The tolerance the output was held to (``LEAST_TOLERANCE`` may raise the request's)."""


def compare_output(
    name: str, expected: Array, actual: Array, *, atol: float, rtol: float, batch_size: int
) -> OutputCheck:
    """Compare ONNX Runtime's ``actual`` with the reference ``expected`` (see the module docstring)."""
    if expected.dtype == object or actual.dtype == object:
        return _compare_strings(name, expected, actual, batch_size)
    dtype = str(expected.dtype)
    least_atol, least_rtol = LEAST_TOLERANCE.get(dtype, (0.0, 0.0))
    atol, rtol = max(atol, least_atol), max(rtol, least_rtol)
    if expected.shape != actual.shape:
        return OutputCheck(
            name,
            dtype,
            batch_size,
            False,
            math.inf,
            math.inf,
            expected.size,
            expected.size,
            worst=f"shape {list(actual.shape)} in ONNX Runtime but {list(expected.shape)} in the reference",
        )
    ref = np.asarray(expected, dtype=np.float64)
    got = np.asarray(actual, dtype=np.float64)
    exact = not (
        np.issubdtype(expected.dtype, np.floating) or np.issubdtype(expected.dtype, np.complexfloating)
    )
    close = (ref == got) if exact else np.isclose(got, ref, atol=atol, rtol=rtol, equal_nan=True)
    finite = np.isfinite(ref) & np.isfinite(got)
    diff = np.where(finite, np.abs(got - ref), np.where(close, 0.0, np.inf))
    max_abs = float(diff.max()) if diff.size else 0.0
    finite_ref = np.abs(ref[np.isfinite(ref)])
    scale = float(finite_ref.max()) if finite_ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    mismatched = int(close.size - np.count_nonzero(close))
    check = OutputCheck(
        name,
        dtype,
        batch_size,
        mismatched == 0,
        max_abs,
        max_rel,
        mismatched,
        int(close.size),
        atol=atol,
        rtol=rtol,
    )
    if mismatched:
        allowed = 0.0 if exact else atol + rtol * np.abs(ref)
        excess = np.where(close, -np.inf, diff - allowed)
        index = np.unravel_index(int(np.argmax(excess)), excess.shape)
        bound = 0.0 if exact else float(atol + rtol * abs(ref[index]))
        check.worst = (
            f"worst at index {tuple(int(i) for i in index)}: expected {ref[index]:.6g}, "
            f"got {got[index]:.6g}, allowed difference {bound:.3g}"
        )
    return check


def _compare_strings(name: str, expected: Array, actual: Array, batch_size: int) -> OutputCheck:
    """String outputs are held to equality (bytes and text of the same UTF-8 are equal)."""

    def text(value: Any) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    if expected.shape != actual.shape:
        worst = f"shape {list(actual.shape)} in ONNX Runtime but {list(expected.shape)} in the reference"
        return OutputCheck(
            name, "string", batch_size, False, math.inf, math.inf, expected.size, expected.size, worst
        )
    same = np.asarray(np.frompyfunc(lambda a, b: text(a) == text(b), 2, 1)(expected, actual), dtype=bool)
    mismatched = int(same.size - np.count_nonzero(same))
    check = OutputCheck(name, "string", batch_size, mismatched == 0, 0.0, 0.0, mismatched, int(same.size))
    if mismatched:
        index = np.unravel_index(int(np.argmin(same)), same.shape)
        check.max_abs_error = check.max_rel_error = math.inf
        check.worst = (
            f"worst at index {tuple(int(i) for i in index)}: expected {text(expected[index])!r}, "
            f"got {text(actual[index])!r}"
        )
    return check


@dataclass
class ParityTally:
    """Per-output worst numbers across batch sizes, and the first failure seen."""

    atol: float
    rtol: float
    reference: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: OutputCheck | None = None

    def add(self, check: OutputCheck) -> None:
        entry = self.outputs.setdefault(
            check.name,
            {
                "dtype": check.dtype,
                "atol": check.atol,
                "rtol": check.rtol,
                "max_abs_error": 0.0,
                "max_rel_error": 0.0,
                "mismatched_elements": 0,
                "worst_batch_size": check.batch_size,
            },
        )
        if check.max_abs_error > (entry["max_abs_error"] or 0.0):
            entry["worst_batch_size"] = check.batch_size
        entry["max_abs_error"] = max(entry["max_abs_error"], check.max_abs_error)
        entry["max_rel_error"] = max(entry["max_rel_error"], check.max_rel_error)
        entry["mismatched_elements"] += check.mismatched
        if not check.passed and self.failure is None:
            self.failure = check

    def report(self, batch_sizes: Sequence[int]) -> dict[str, Any]:
        outputs = {
            name: {
                key: (_json_float(value) if key.startswith("max_") else value) for key, value in entry.items()
            }
            for name, entry in self.outputs.items()
        }
        return {
            "passed": self.failure is None,
            "reference": self.reference,
            "atol": self.atol,
            "rtol": self.rtol,
            "batch_sizes": list(batch_sizes),
            "outputs": outputs,
        }

    def failure_message(self) -> str:
        check = self.failure
        if check is None:
            return "parity check passed"
        where = f"output {check.name!r} at batch size {check.batch_size}"
        if check.worst.startswith("shape"):
            return f"parity check failed: {where} has {check.worst}"
        if check.dtype.startswith(("int", "uint", "bool")):
            return (
                f"parity check failed: {where} ({check.dtype}) differs in {check.mismatched} of "
                f"{check.elements} elements between {self.reference} and ONNX Runtime (integer and bool "
                f"outputs must match exactly; max abs error {check.max_abs_error:.3g}; {check.worst})"
            )
        return (
            f"parity check failed: {where} differs between {self.reference} and ONNX Runtime: "
            f"max abs error {check.max_abs_error:.3g}, max rel error {check.max_rel_error:.3g}; "
            f"{check.mismatched} of {check.elements} elements exceed atol={check.atol:g} + "
            f"rtol={check.rtol:g} * |expected| ({check.worst})"
        )


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def check_parity(
    *,
    inputs: Sequence[TensorSpec],
    output_names: Sequence[str],
    batch_sizes: Sequence[int],
    reference: Runner,
    candidate: Runner,
    tally: ParityTally,
    seed: int,
    int_high: int,
) -> None:
    """Run both runtimes on each batch size and fold the comparison into ``tally``.

    One batch is alive at a time. Raises ``ChildError`` (``parity_failed``) when a
    runtime fails on a batch; numerical failures are left in ``tally.failure``.
    """
    for batch_size in batch_sizes:
        progress(f"parity batch {batch_size}")
        feeds = draw_inputs(inputs, batch_size, seed=seed, int_high=int_high)
        expected = _run(reference, feeds, tally.reference, batch_size)
        actual = _run(candidate, feeds, "ONNX Runtime", batch_size)
        if len(expected) != len(actual):
            raise ChildError(
                f"parity check failed: {tally.reference} returned {len(expected)} outputs but ONNX Runtime "
                f"returned {len(actual)} at batch size {batch_size}",
                "parity_failed",
            )
        for name, ref, got in zip(output_names, expected, actual, strict=True):
            tally.add(compare_output(name, ref, got, atol=tally.atol, rtol=tally.rtol, batch_size=batch_size))
        del feeds, expected, actual


def _run(runner: Runner, feeds: Feeds, runtime: str, batch_size: int) -> list[Array]:
    try:
        return runner(feeds)
    except (ChildError, NotApplicableError):
        raise
    except Exception as exc:
        raise_if_out_of_memory(exc, f"running {runtime} at batch size {batch_size}")
        hint = ""
        if runtime == "ONNX Runtime" and any(word in str(exc) for word in ("shape", "Shape", "dimension")):
            hint = " (the exported graph may have a batch size baked in, e.g. by a traced reshape)"
        raise ChildError(
            f"parity check failed: {runtime} failed at batch size {batch_size}: {first_line(exc)}{hint}",
            "parity_failed",
        ) from None
