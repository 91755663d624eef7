"""Class labels of a version's outputs: the names the classification extension appends.

A version may carry, for any of its outputs, one label per class in index order (an image
classifier's class names). A top-k answer (``classification``, ``class_count`` in tritonclient)
then reads ``"<value>:<index>:<label>"``, as Triton's does with a ``label_filename``; a class past
the end of its output's list has no label part. The platform checks labels at upload against the
version's outputs, keeps them with the version, and hands them to each worker as
``--class-labels`` (JSON)::

    {"logits": ["cat", "dog", "bird"]}

The bound on the whole text keeps it one command-line argument (128 KiB on Linux).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.wire import at, mapping, sequence, text

MAX_LABEL_CHARS = 256
MAX_LABELS_BYTES = 64 * 1024
"""The encoded JSON of every output's labels together."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ClassLabels:
    """Each labelled output's labels, by class index."""

    outputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, labels in self.outputs.items():
            where = at("class_labels", name)
            if not name or len(name) > 128:
                raise ContractError(where, "must name an output (1-128 characters)")
            if not labels:
                raise ContractError(where, "must have at least one label")
            for index, label in enumerate(labels):
                if not label or len(label) > MAX_LABEL_CHARS or _CONTROL.search(label):
                    raise ContractError(
                        at(where, index),
                        f"must be 1-{MAX_LABEL_CHARS} characters, without control characters "
                        "(a line break, a tab)",
                    )
        size = len(labels_text(self).encode())
        if size > MAX_LABELS_BYTES:
            raise ContractError(
                "class_labels", f"{size} bytes of JSON, above the limit of {MAX_LABELS_BYTES} bytes"
            )

    def of(self, output: str) -> tuple[str, ...]:
        """The labels of ``output`` (none when it has none)."""
        return self.outputs.get(output, ())


def encode_labels(labels: ClassLabels) -> dict[str, list[str]]:
    return {name: list(values) for name, values in labels.outputs.items()}


def parse_labels(payload: object) -> ClassLabels:
    """The labels in a decoded JSON value; ``ContractError`` names the first field refused."""
    outputs = mapping(payload, "class_labels")
    return ClassLabels(
        outputs={
            name: tuple(
                text(label, at(at("class_labels", name), index))
                for index, label in enumerate(sequence(values, at("class_labels", name)))
            )
            for name, values in outputs.items()
        }
    )


def labels_from_text(text_value: str) -> object:
    """What a person types or keeps in a file: JSON (a list, or lists by output name), or else one
    label per line for the first output (blank lines at the start and end dropped, each line's
    surrounding spaces too; a blank line between labels stays, and is refused as an empty label)."""
    stripped = text_value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except (ValueError, RecursionError):
            pass  # a label that starts with a bracket (or nesting deeper than JSON is read)
    return [line.strip() for line in stripped.splitlines()] if stripped else []


def labels_text(labels: ClassLabels | None) -> str:
    """The ``--class-labels`` value ("" for none)."""
    if labels is None or not labels.outputs:
        return ""
    return json.dumps(encode_labels(labels), separators=(",", ":"), ensure_ascii=False)


def parse_labels_text(text_value: str) -> ClassLabels:
    """``--class-labels`` read back (empty: no labels)."""
    if not text_value:
        return ClassLabels()
    try:
        payload = json.loads(text_value)
    except (ValueError, RecursionError):
        raise ContractError("class_labels", "must be JSON") from None
    return parse_labels(payload)
