"""Input/output signatures: parsing, validation and comparison, and the outputs' class labels.
Pure: no ORM, no torch.

A signature is JSON::

    {"inputs":  [{"name": "x", "dtype": "float32", "shape": [-1, 3, 32, 32]}],
     "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]}

``-1`` marks a dynamic dimension; the first dimension is the batch axis when it is
dynamic. Errors name the offending field (``inputs[0].shape[2]``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.labels import encode_labels, parse_labels
from registry.errors import InvalidLabelsError, InvalidSignatureError

DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "string",
)
UNFED_DTYPES = ("bfloat16",)
"""Dtypes a model may answer in (served converted) but not take: numpy, which feeds ONNX Runtime and
decodes requests, has no bfloat16."""
UNSCORED_DTYPES = ("bool", "string")
"""Dtypes of outputs that cannot be scores per class, so take no class labels."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")
MAX_TENSORS = 64
MAX_RANK = 8
MAX_DIM = 1 << 24


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: dtype and shape (``-1`` for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """The tensors a model takes and returns. ``outputs`` may be empty until conversion."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }

    @property
    def has_dynamic_batch(self) -> bool:
        return all(t.shape and t.shape[0] == -1 for t in self.inputs)


def parse_signature(raw: Any, *, require_outputs: bool = False) -> Signature:
    """Validate a JSON-like signature; raises ``InvalidSignatureError`` naming the field."""
    if not isinstance(raw, dict):
        raise InvalidSignatureError("signature: must be a JSON object with 'inputs' and 'outputs'")
    unknown = set(raw) - {"inputs", "outputs"}
    if unknown:
        raise InvalidSignatureError(f"signature: unknown field(s) {', '.join(sorted(unknown))}")
    inputs = _parse_tensors(raw.get("inputs"), "inputs", required=True)
    outputs = _parse_tensors(raw.get("outputs", []), "outputs", required=require_outputs)
    return Signature(inputs=inputs, outputs=outputs)


def _parse_tensors(raw: Any, field: str, *, required: bool) -> tuple[TensorSpec, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise InvalidSignatureError(f"signature.{field}: must be a list of tensors")
    if required and not raw:
        raise InvalidSignatureError(f"signature.{field}: at least one tensor is required")
    if len(raw) > MAX_TENSORS:
        raise InvalidSignatureError(f"signature.{field}: at most {MAX_TENSORS} tensors")
    specs = tuple(_parse_tensor(item, f"{field}[{i}]") for i, item in enumerate(raw))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidSignatureError(f"signature.{field}: duplicate name(s) {', '.join(duplicates)}")
    return specs


def _parse_tensor(raw: Any, where: str) -> TensorSpec:
    if not isinstance(raw, dict):
        raise InvalidSignatureError(f"signature.{where}: must be an object with name, dtype, shape")
    unknown = set(raw) - {"name", "dtype", "shape"}
    if unknown:
        raise InvalidSignatureError(f"signature.{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidSignatureError(
            f"signature.{where}.name: must be 1-128 characters of letters, digits, _ . : / -, "
            "starting with a letter or _"
        )
    dtype = raw.get("dtype")
    if dtype not in DTYPES:
        raise InvalidSignatureError(f"signature.{where}.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not shape:
        raise InvalidSignatureError(f"signature.{where}.shape: must be a non-empty list of integers")
    if len(shape) > MAX_RANK:
        raise InvalidSignatureError(f"signature.{where}.shape: rank {len(shape)} is above {MAX_RANK}")
    for index, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0 or dim < -1 or dim > MAX_DIM:
            raise InvalidSignatureError(
                f"signature.{where}.shape[{index}]: {dim!r} must be a positive integer or -1 (dynamic)"
            )
    return TensorSpec(name=name, dtype=dtype, shape=tuple(shape))


def check_inputs_fed(signature: Signature) -> None:
    """Refuse an input no request can carry (``UNFED_DTYPES``), naming it and the way around."""
    for index, spec in enumerate(signature.inputs):
        if spec.dtype in UNFED_DTYPES:
            raise InvalidSignatureError(
                f"signature.inputs[{index}].dtype: input {spec.name!r} is {spec.dtype}, which requests "
                "cannot carry (numpy has no such type); take float32 and cast inside the model"
            )


def check_names_apart(signature: Signature) -> None:
    """Refuse an output named like an input: the ONNX export of a PyTorch model names each value once."""
    inputs = {spec.name for spec in signature.inputs}
    for index, spec in enumerate(signature.outputs):
        if spec.name in inputs:
            raise InvalidSignatureError(
                f"signature.outputs[{index}].name: {spec.name!r} is also an input's name; the ONNX export "
                "names each tensor once, so give the output another name"
            )


def check_compatible(declared: Signature, actual: Signature) -> None:
    """Refuse a declared signature that disagrees with the one read from the artifact."""
    for field in ("inputs", "outputs"):
        want: tuple[TensorSpec, ...] = getattr(declared, field)
        have: tuple[TensorSpec, ...] = getattr(actual, field)
        if not want:
            continue
        if [t.name for t in want] != [t.name for t in have]:
            raise InvalidSignatureError(
                f"signature.{field}: names {[t.name for t in want]} differ from the model's "
                f"{[t.name for t in have]}"
            )
        for index, (w, h) in enumerate(zip(want, have, strict=True)):
            if w.dtype != h.dtype:
                raise InvalidSignatureError(
                    f"signature.{field}[{index}].dtype: {w.dtype} differs from the model's {h.dtype}"
                )
            if len(w.shape) != len(h.shape) or any(
                a != b and -1 not in (a, b) for a, b in zip(w.shape, h.shape, strict=True)
            ):
                raise InvalidSignatureError(
                    f"signature.{field}[{index}].shape: {list(w.shape)} does not fit the model's "
                    f"{list(h.shape)}"
                )


def request_differences(first: Signature, second: Signature) -> list[str]:
    """How a request or an answer that suits ``first`` may not suit ``second``, and the reverse:
    inputs one takes and the other does not, another dtype, rank or fixed size, outputs by another
    name. Empty when a client cannot tell the two apart by what it sends and reads."""
    found: list[str] = []
    theirs = {spec.name: spec for spec in second.inputs}
    for spec in first.inputs:
        other = theirs.pop(spec.name, None)
        if other is None:
            found.append(f"input {spec.name!r} is taken by one only")
        elif (spec.dtype, spec.shape) != (other.dtype, other.shape):
            found.append(
                f"input {spec.name!r} is {spec.dtype} {list(spec.shape)} in one, "
                f"{other.dtype} {list(other.shape)} in the other"
            )
    found.extend(f"input {name!r} is taken by one only" for name in theirs)
    names = {spec.name for spec in first.outputs} ^ {spec.name for spec in second.outputs}
    if first.outputs and second.outputs and names:
        found.append(f"output(s) {', '.join(repr(n) for n in sorted(names))} answered by one only")
    return found


def resolve_labels(raw: Any, signature: Signature) -> dict[str, list[str]]:
    """A version's class labels, checked against its outputs: a list labels its first numeric output, an
    object labels outputs by name. A labelled output is numeric and, where its classes are a fixed
    number (every dimension after the batch's), has a label for each. ``{}`` for none."""
    if raw in (None, "", [], {}):
        return {}
    if not signature.outputs:
        raise InvalidLabelsError(
            "class_labels: the version's outputs are not known before its conversion unless the "
            "upload's signature declares them ('outputs')"
        )
    if isinstance(raw, list):  # the first output that scores classes (a classifier's label comes first)
        scores = [spec for spec in signature.outputs if spec.dtype not in UNSCORED_DTYPES]
        raw = {(scores or signature.outputs)[0].name: raw}
    try:
        labels = parse_labels(raw)
    except ContractError as exc:
        raise InvalidLabelsError(str(exc)) from None
    outputs = {spec.name: spec for spec in signature.outputs}
    for name, values in labels.outputs.items():
        spec = outputs.get(name)
        if spec is None:
            raise InvalidLabelsError(
                f"class_labels.{name}: the model has no output {name!r} (its outputs: {', '.join(outputs)})"
            )
        if spec.dtype in UNSCORED_DTYPES:
            raise InvalidLabelsError(
                f"class_labels.{name}: output {name!r} is {spec.dtype}, not a score per class"
            )
        classes = math.prod(spec.shape[1:])
        if all(dim > 0 for dim in spec.shape[1:]) and len(values) != classes:
            raise InvalidLabelsError(
                f"class_labels.{name}: {len(values)} labels for the {classes} classes of output "
                f"{name!r} (shape {list(spec.shape)}): one label per class, in class order"
            )
    return encode_labels(labels)
