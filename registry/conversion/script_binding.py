"""What the TorchScript-based exporter is given for a ScriptModule. Pure.

The exporter exports every argument of the forward it is given and each tensor
it returns, so two kinds of models fail it although PyTorch runs them: a forward
with arguments the signature leaves to their defaults (``mask=None``,
``scale: float = 2.0``), and one that answers with a dict, a list or non-tensor
values. Such a module is exported through a wrapper whose forward takes the
declared tensors, calls the module, and returns its tensors as one flat tuple, in
the order the PyTorch reference flattens them (``torch.utils._pytree``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from registry.conversion.channel import ChildError


def exportable(module: Any, inputs: Sequence[str], result: Any) -> tuple[Any, list[str]]:
    """The module to export for the declared ``inputs``, given what it returned on a sample
    (``result``), and the outputs' default names: a dict's keys when it returned a flat dict of
    tensors keyed by identifiers, else ``output_0``, ``output_1``, ..."""
    count = len(inputs)
    leaves = list(_leaves(result, "result"))
    names = _key_names(result, len(leaves), inputs) or [f"output_{index}" for index in range(len(leaves))]
    takes_all = count == len(module.forward.schema.arguments) - 1
    if takes_all and _tensor_tuples(result):
        return module, names
    return _wrapped(module, count, leaves), names


def _leaves(value: Any, expression: str) -> Iterator[str]:
    """The TorchScript expressions that read each tensor of ``value`` out of ``expression``."""
    import torch

    if isinstance(value, torch.Tensor):
        yield expression
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{expression}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ChildError(
                    f"the model returns a dict keyed by {type(key).__name__}; key its outputs by "
                    "strings or return a tuple of tensors",
                    "export_failed",
                )
            yield from _leaves(item, f"{expression}[{json.dumps(key)}]")


def _tensor_tuples(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, tuple) and all(_tensor_tuples(item) for item in value)


def _key_names(result: Any, count: int, inputs: Sequence[str]) -> list[str] | None:
    import torch

    if not isinstance(result, dict) or len(result) != count:
        return None
    if not all(isinstance(v, torch.Tensor) for v in result.values()):
        return None
    return key_names(list(result), inputs)


def key_names(keys: list[Any], inputs: Sequence[str]) -> list[str] | None:
    """A flat dict's keys as its outputs' names, when every key is an identifier of at most 64
    characters and no input's name (the export names each tensor once), for TorchScript and
    ``.pt2`` answers alike; None otherwise."""
    taken = set(inputs)
    if all(
        isinstance(key, str) and key.isidentifier() and len(key) <= 64 and key not in taken for key in keys
    ):
        return list(keys)
    return None


def _wrapped(module: Any, count: int, leaves: list[str]) -> Any:
    import torch

    class Declared(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

    names = [f"input_{index}" for index in range(count)]
    answer = leaves[0] if len(leaves) == 1 else f"({', '.join(leaves)},)"
    source = (
        f"def forward(self, {', '.join(f'{name}: Tensor' for name in names)}):\n"
        f"    result = self.model({', '.join(names)})\n"
        f"    return {answer}\n"
    )
    try:
        wrapper = torch.jit.script(Declared(module))
        wrapper.define(source)
    except RuntimeError as exc:
        raise ChildError(
            f"the model's forward cannot be exported as called with the {count} declared tensor "
            f"input(s), its other arguments taking their defaults, and its tensors returned as a tuple: "
            f"{str(exc).strip().splitlines()[0][:300]}",
            "invalid_signature",
        ) from None
    return wrapper
