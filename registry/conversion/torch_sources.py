"""Open a TorchScript archive or a ``.pt2`` program, probe it, and prepare its ONNX export. Pure.

Probing runs PyTorch on a sample batch drawn from the signature (finding an
integer range the model accepts) and, with a dynamic batch, on a second batch
size: output dimensions that change between the two are the dynamic ones. Output
names are the signature's when it declares outputs, else a returned dict's keys or
``output_0``, ... for TorchScript (``script_binding``) and the program's own names for ``.pt2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from registry.conversion.channel import ChildError, progress
from registry.conversion.onnx_export import (
    DimRange,
    export_program,
    export_torchscript,
    load_program,
    load_torchscript,
    program_input_dims,
    quiet_warnings,
)
from registry.conversion.parity import (
    DYNAMIC_DIM_SIZE,
    Array,
    Feeds,
    Runner,
    TensorSpec,
    draw_inputs,
    has_dynamic_batch,
    probe_int_high,
)
from registry.conversion.script_binding import exportable

SAMPLE_BATCH = 2
SECOND_BATCH = 3


@dataclass
class PreparedSource:
    """A loaded model ready to export: its runner, the inputs to draw, and the export itself."""

    runner: Runner
    inputs: list[TensorSpec]
    int_high: int
    export: Callable[[str, int | None], list[str]]
    batch_range: DimRange | None = None
    warnings: list[str] = field(default_factory=list)


def torch_runner(fn: Callable[..., Any]) -> Runner:
    """Call ``fn`` on the feeds (copied: a forward may modify its inputs) and flatten its outputs."""
    import torch
    from torch.utils import _pytree

    def run(feeds: Feeds) -> list[Array]:
        args = [torch.tensor(array) for array in feeds.values()]
        with torch.no_grad(), quiet_warnings():
            result = fn(*args)
        return [_to_numpy(t) for t in _pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]

    return run


def _to_numpy(tensor: Any) -> Array:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    result: Array = tensor.numpy()
    return result


def prepare_torchscript(
    path: str, inputs: list[TensorSpec], outputs: list[TensorSpec], *, seed: int
) -> PreparedSource:
    """Load a TorchScript archive, probe it, and bind its export with dynamic axes."""
    import torch

    progress("loading the TorchScript archive")
    module = load_torchscript(path)
    _check_arity(module, inputs)
    runner = torch_runner(module)
    dynamic = has_dynamic_batch(inputs)
    progress("running PyTorch on sample inputs")
    int_high, first = probe_int_high(
        runner, inputs, seed=seed, batch_size=SAMPLE_BATCH, label="PyTorch", code="model_failed"
    )
    second = runner(draw_inputs(inputs, SECOND_BATCH, seed=seed, int_high=int_high)) if dynamic else first
    sample = draw_inputs(inputs, SAMPLE_BATCH, seed=seed, int_high=int_high)
    with torch.no_grad(), quiet_warnings():
        result = module(*(torch.tensor(array) for array in sample.values()))
    exported, leaf_names = exportable(module, [spec.name for spec in inputs], result)
    names = output_names(outputs, len(first)) or leaf_names
    check_output_shapes(outputs, first)
    axes = {spec.name: _input_axes(spec, dynamic) for spec in inputs}
    declared = {spec.name: spec for spec in outputs}
    for name, one, two in zip(names, first, second, strict=True):
        axes[name] = _output_axes(name, declared.get(name), one, two, dynamic)

    def export(output_path: str, opset: int | None) -> list[str]:
        return export_torchscript(
            exported,
            [torch.tensor(array) for array in sample.values()],
            output_path=output_path,
            input_names=[spec.name for spec in inputs],
            output_names=names,
            dynamic_axes={name: value for name, value in axes.items() if value},
            opset=opset,
        )

    return PreparedSource(runner=runner, inputs=inputs, int_high=int_high, export=export)


def _check_arity(module: Any, inputs: Sequence[TensorSpec]) -> None:
    try:
        arguments = list(module.forward.schema.arguments)[1:]
    except (AttributeError, RuntimeError):
        raise ChildError("the TorchScript module has no forward method", "invalid_artifact") from None
    required = [a.name for a in arguments if not a.has_default_value()]
    if not len(required) <= len(inputs) <= len(arguments):
        raise ChildError(
            f"the model's forward takes ({', '.join(a.name for a in arguments)}) but the signature declares "
            f"{len(inputs)} input(s) ({', '.join(s.name for s in inputs)})",
            "invalid_signature",
        )


def output_names(outputs: Sequence[TensorSpec], count: int) -> list[str] | None:
    """The signature's output names, None when it declares none; refuses a count mismatch."""
    if not outputs:
        return None
    if len(outputs) != count:
        raise ChildError(
            f"the signature declares {len(outputs)} output(s) ({', '.join(o.name for o in outputs)}) but the "
            f"model returns {count} tensor(s)",
            "invalid_signature",
        )
    return [spec.name for spec in outputs]


def check_output_shapes(outputs: Sequence[TensorSpec], returned: Sequence[Array]) -> None:
    """Refuse declared outputs whose rank or fixed dimensions (past the batch) are not what the
    model returns: the declared shape is what clients, and the class labels, are told."""
    for index, (spec, array) in enumerate(zip(outputs, returned, strict=False)):
        fits = len(spec.shape) == array.ndim and all(
            dim in (-1, size) for dim, size in zip(spec.shape[1:], array.shape[1:], strict=True)
        )
        if not fits:
            raise ChildError(
                f"signature.outputs[{index}].shape: {list(spec.shape)} is declared, but the model returns "
                f"{spec.name!r} of shape {['batch', *array.shape[1:]]}",
                "invalid_signature",
            )


def _input_axes(spec: TensorSpec, dynamic_batch: bool) -> dict[int, str]:
    return {
        index: "batch" if index == 0 and dynamic_batch else f"{spec.name}_dim{index}"
        for index, dim in enumerate(spec.shape)
        if dim == -1
    }


def _output_axes(
    name: str, declared: TensorSpec | None, first: Array, second: Array, dynamic_batch: bool
) -> dict[int, str]:
    """Dynamic output axes: those the signature marks -1, and those that changed with the batch size."""
    axes: dict[int, str] = {}
    if declared is not None:
        for index, dim in enumerate(declared.shape[: first.ndim]):
            if dim == -1:
                axes[index] = "batch" if index == 0 and dynamic_batch else f"{name}_dim{index}"
    if first.ndim == second.ndim:
        for index, (one, two) in enumerate(zip(first.shape, second.shape, strict=True)):
            if one != two:
                is_batch = index == 0 and (one, two) == (SAMPLE_BATCH, SECOND_BATCH)
                axes[index] = "batch" if is_batch else f"{name}_dim{index}"
    return axes


def prepare_program(
    path: str, inputs: list[TensorSpec], outputs: list[TensorSpec], *, seed: int
) -> PreparedSource:
    """Load a ``.pt2`` program, take its shapes and dimension ranges, probe it, bind its export."""
    progress("loading the torch.export program")
    program = load_program(path)
    dims = program_input_dims(program)
    if len(dims) != len(inputs):
        raise ChildError(
            f"the program takes {len(dims)} input(s) but the signature declares {len(inputs)}",
            "invalid_signature",
        )
    specs = [_program_spec(spec, shape) for spec, shape in zip(inputs, dims, strict=True)]
    batch_range = _batch_range(dims) if has_dynamic_batch(specs) else None
    notes = [] if has_dynamic_batch(specs) else [_fixed_batch_warning(specs)]
    with quiet_warnings():
        runner = torch_runner(program.module())
    progress("running PyTorch on sample inputs")
    sample_batch = batch_range.clamp(SAMPLE_BATCH) if batch_range else SAMPLE_BATCH
    int_high, first = probe_int_high(
        runner, specs, seed=seed, batch_size=sample_batch, label="PyTorch", code="model_failed"
    )
    names = output_names(outputs, len(first))
    sample = draw_inputs(specs, sample_batch, seed=seed, int_high=int_high)

    def export(output_path: str, opset: int | None) -> list[str]:
        import torch

        return export_program(
            program,
            [torch.tensor(array) for array in sample.values()],
            output_path=output_path,
            input_names=[spec.name for spec in specs],
            output_names=names,
            opset=opset,
        )

    return PreparedSource(
        runner=runner, inputs=specs, int_high=int_high, export=export, batch_range=batch_range, warnings=notes
    )


def _program_spec(spec: TensorSpec, dims: list[int | DimRange]) -> TensorSpec:
    """The signature entry with the program's shape: static sizes, -1 where the program is dynamic."""
    if len(dims) != len(spec.shape):
        raise ChildError(
            f"input {spec.name!r} has rank {len(dims)} in the program but {len(spec.shape)} in the signature",
            "invalid_signature",
        )
    shape: list[int] = []
    for index, dim in enumerate(dims):
        if isinstance(dim, int):
            shape.append(dim)
        elif index == 0 or dim.allows(DYNAMIC_DIM_SIZE):
            shape.append(-1)
        else:
            shape.append(dim.clamp(DYNAMIC_DIM_SIZE))
    return TensorSpec(name=spec.name, dtype=spec.dtype, shape=tuple(shape))


def _batch_range(dims: list[list[int | DimRange]]) -> DimRange:
    ranges = [shape[0] for shape in dims if shape and isinstance(shape[0], DimRange)]
    uppers = [r.upper for r in ranges if r.upper is not None]
    return DimRange(lower=max((r.lower for r in ranges), default=0), upper=min(uppers) if uppers else None)


def _fixed_batch_warning(specs: Sequence[TensorSpec]) -> str:
    fixed = next((s for s in specs if s.shape and s.shape[0] != -1), specs[0] if specs else None)
    size = fixed.shape[0] if fixed and fixed.shape else "?"
    name = fixed.name if fixed else "?"
    return (
        f"the .pt2 program was exported with a fixed batch size of {size} for input {name!r}, so the ONNX "
        f"model accepts only that batch size; export with dynamic_shapes={{{name!r}: {{0: "
        "torch.export.Dim('batch')}} to make the batch axis dynamic"
    )
