"""What conversion does for an ONNX upload, which has no PyTorch source. Pure: no Django.

- ``onnx_reference``: parity's reference, ``onnx.reference.ReferenceEvaluator`` (numpy, op by op),
  when the file is under ``REFERENCE_MAX_BYTES`` and the evaluator implements every operator
  (with the operators it gets wrong mended: ``reference_ops``).
- ``free_fixed_batch``: ``torch.onnx.export`` without ``dynamic_axes`` (its default) writes every
  input and output with a first dimension of 1, and a worker cannot stack requests into such a
  graph: it would run each one alone. When every input and output starts with a fixed 1,
  conversion tries the graph with that dimension free. It keeps the freed graph only when a batch
  of ``PROBE_BATCH`` samples answers as the same samples run one at a time through the original
  (shapes, and values within the version's parity tolerance); a graph that reshapes to a fixed
  ``[1, ...]`` or mixes samples fails that and stays at batch 1, with a warning that says how to
  export it with a batch axis.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from registry.conversion.channel import ChildError, progress
from registry.conversion.onnx_check import CheckedModel, check_onnx_file, default_opset
from registry.conversion.onnx_export import first_line, raise_if_out_of_memory
from registry.conversion.parity import (
    Array,
    Feeds,
    NotApplicableError,
    Runner,
    TensorSpec,
    compare_output,
    draw_inputs,
)

REFERENCE_MAX_BYTES = 50 * 1024 * 1024
REFERENCE_BUDGET_S = 60.0
PROBE_BATCH = 3
"""The batch a freed graph must answer as that many single runs (odd: a reshape to a fixed
``[1, -1]`` or ``[2, ...]`` cannot pass by chance)."""
EXPORT_HINT = (
    "export it with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}) for "
    "each input and output, or dynamo=True with dynamic_shapes) to let workers batch requests"
)


def fixed_batch_note(fmt: str, inputs: Sequence[TensorSpec]) -> str | None:
    """The warning for inputs whose first dimension is fixed, which workers cannot batch; None when
    every input's is dynamic, or for a ``.pt2`` program (its export warns with its own words)."""
    fixed = [spec for spec in inputs if not spec.shape or spec.shape[0] != -1]
    if not fixed or not inputs or fmt == "torch_export":
        return None
    named = ", ".join(f"{spec.name!r} {list(spec.shape)}" for spec in fixed[:4])
    if fmt == "torchscript":
        return (
            f"the signature gives a fixed first dimension to {named}: workers run each request alone; "
            "declare it -1 (a dynamic batch) to let them batch requests"
        )
    have = f"inputs {named} have" if len(fixed) > 1 else f"input {named} has"
    return f"the model's {have} a fixed first dimension: workers run each request alone; {EXPORT_HINT}"


def ort_runner(session: Any) -> Runner:
    """``session`` as a runner; feeds the graph does not take (an input it never reads) are left out."""
    names = [i.name for i in session.get_inputs()]

    def run(feeds: Feeds) -> list[Array]:
        return list(session.run(None, {name: feeds[name] for name in names if name in feeds}))

    return run


def onnx_reference(path: str, model: Any) -> Runner:
    """``onnx.reference`` as the parity reference of an ONNX upload; NotApplicableError when it cannot be."""
    if os.path.getsize(path) > REFERENCE_MAX_BYTES:
        raise NotApplicableError(
            f"no PyTorch source, and the model is over {REFERENCE_MAX_BYTES // (1024 * 1024)} MB, "
            "too large for onnx.reference"
        )
    from onnx.reference import ReferenceEvaluator

    from registry.conversion.reference_ops import MENDED

    try:
        evaluator = ReferenceEvaluator(model, new_ops=MENDED)
    except Exception as exc:
        raise NotApplicableError(
            f"no PyTorch source, and onnx.reference cannot load the model: {first_line(exc)}"
        ) from None
    deadline = time.monotonic() + REFERENCE_BUDGET_S

    def run(feeds: Feeds) -> list[Array]:
        if time.monotonic() > deadline:
            raise NotApplicableError(
                f"no PyTorch source, and onnx.reference took over {REFERENCE_BUDGET_S:g} s"
            )
        try:
            return [np.asarray(value) for value in evaluator.run(None, feeds)]
        except Exception as exc:
            raise_if_out_of_memory(exc, "running onnx.reference")
            raise NotApplicableError(
                f"no PyTorch source, and onnx.reference cannot run the model: {first_line(exc)}"
            ) from None

    return run


def free_fixed_batch(
    checked: CheckedModel,
    path: str,
    inputs: Sequence[TensorSpec],
    *,
    threads: int,
    int_high: int,
    seed: int,
    tolerance: tuple[float, float],
) -> tuple[CheckedModel | None, str | None]:
    """``(the freed model, a note)`` when ``path``'s graph now batches (the file is rewritten);
    ``(None, a warning)`` when its fixed batch of 1 must stay; ``(None, None)`` when the graph has
    no such fixed batch (a dynamic one already, or a shape that is not batch-like)."""
    graph = checked.model.graph
    initializers = {init.name for init in graph.initializer}
    values = [*(i for i in graph.input if i.name not in initializers), *graph.output]
    if not inputs or not all(_first_dim(value) in (1, None) for value in values):
        return None, None
    if not all(spec.shape and spec.shape[0] == 1 for spec in inputs):
        return None, None
    progress("trying the model with a free batch dimension")
    trial = path + ".batch.onnx"
    why = ""
    try:
        for keep_batch in (False, True):
            freed = _free(checked.model, values, trial, threads, keep_batch=keep_batch)
            if isinstance(freed, str):
                why = why or freed
            elif isinstance(freed, CheckedModel):
                failed = _batches_like_single_runs(checked, freed, inputs, int_high, seed, tolerance)
                if failed is None:
                    os.replace(trial, path)
                    return freed, _freed_note(keep_batch)
                why = why or failed
    finally:
        if os.path.exists(trial):
            os.remove(trial)
    return None, (
        "the model's inputs have a fixed first dimension of 1 and it does not run as a batch "
        f"({why}): workers run each request alone; {EXPORT_HINT}"
    )


def _freed_note(kept_batch: bool) -> str:
    how = (
        " and its reshapes to, and constants joined at, a first dimension of 1 follow the batch"
        if kept_batch
        else ""
    )
    return (
        "the model's inputs and outputs had a fixed first dimension of 1; conversion made it the batch "
        f"dimension{how} (a batch of {PROBE_BATCH} answers as {PROBE_BATCH} single runs), so workers "
        "batch requests"
    )


def _first_dim(value: Any) -> int | None:
    """The first dimension's fixed size; None when it is symbolic or unknown; 0 without one."""
    if not value.type.HasField("tensor_type"):
        return 0  # a sequence or map
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    if not tensor.shape.dim:
        return 0
    first = tensor.shape.dim[0]
    return int(first.dim_value) if first.HasField("dim_value") else None


def _free(
    model: Any, values: Sequence[Any], trial: str, threads: int, *, keep_batch: bool
) -> CheckedModel | str | None:
    """Write ``model`` with the first dimension of ``values`` free to ``trial`` and check it;
    ``model`` itself is left as it was. With ``keep_batch``, each Reshape of a value computed from
    the inputs to a constant shape ``[1, ...]`` keeps the batch instead (``_keep_batch_in_reshapes``),
    and constants of one row joined to such values grow with the batch (``_tile_joined_constants``);
    None when there is neither. Returns the checked trial model or why not."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if keep_batch and not _keep_batch_in_reshapes(copy.graph) + _tile_joined_constants(copy):
        return None
    names = {value.name for value in values}
    for value in [*copy.graph.input, *copy.graph.output]:
        tensor = value.type.tensor_type
        if value.name in names and tensor.HasField("shape") and tensor.shape.dim:
            tensor.shape.dim[0].Clear()
            tensor.shape.dim[0].dim_param = "batch"
    del copy.graph.value_info[:]  # the intermediate shapes inferred at batch 1
    onnx.save_model(copy, trial)
    del copy
    try:
        return check_onnx_file(trial, threads=threads)
    except ChildError as exc:
        return f"with a free first dimension, {exc.message}"


def _keep_batch_in_reshapes(graph: Any) -> int:
    """Point each Reshape of a value that depends on a graph input, whose shape is a constant
    ``[1, ...]``, at a new constant that keeps the batch: ``[-1, ...]`` (the size inferred, which
    also undoes a batch merged with another dimension, as attention's heads) when no other size is
    -1, else ``[0, ...]`` (0: copy the input's first dimension). A Reshape with ``allowzero`` set,
    which reads 0 as a size, takes the 0 only when its shape holds no other 0 (the attribute then
    makes no difference, and is cleared). Returns how many changed."""
    from onnx import numpy_helper

    constants, fed, taken = _dataflow(graph)
    changed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[0] not in fed or node.input[1] not in constants:
            continue
        shape = numpy_helper.to_array(constants[node.input[1]])
        if shape.ndim != 1 or not shape.size or shape[0] != 1:
            continue
        infer = not (shape == -1).any()
        allowzero = [] if infer else [a for a in node.attribute if a.name == "allowzero" and a.i]
        if allowzero and (shape == 0).any():
            continue
        name = _new_name(f"{node.input[1]}_keeps_batch", taken)
        kept = shape.copy()
        kept[0] = -1 if infer else 0
        graph.initializer.append(numpy_helper.from_array(kept, name))
        node.input[1] = name
        for attribute in allowzero:
            attribute.i = 0
        changed += 1
    return changed


def _dataflow(graph: Any) -> tuple[dict[str, Any], set[str], set[str]]:
    """``(constants by name, the values computed from a graph input, every name in use)``."""
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    fed = {i.name for i in graph.input if i.name not in constants}
    for node in graph.node:  # topologically sorted, as ONNX requires
        if any(name in fed for name in node.input):
            fed.update(node.output)
    return constants, fed, {*constants, *(o for node in graph.node for o in node.output)}


def _new_name(wanted: str, taken: set[str]) -> str:
    while wanted in taken:
        wanted += "_"
    taken.add(wanted)
    return wanted


def _ranks(model: Any) -> dict[str, int]:
    """Each value's rank, where ONNX shape inference knows it (at the uploaded batch of 1)."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:
        return {}
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


def _tile_joined_constants(model: Any) -> int:
    """Grow each value that does not depend on the inputs (a constant, or computed from constants)
    and that a Concat joins, on an axis other than the first, to a value that does, to that value's
    first dimension: ``Expand(constant, [Shape(joined)[0], *Shape(constant)[1:]])``. At batch 1
    both first dimensions were 1 (the Concat required it); freed, the constant follows the batch.
    Exporters fold ``cls_token.expand(batch, -1, -1)`` (a vision transformer's class token) into
    such a value. Returns how many grew."""
    from onnx import helper, numpy_helper

    if default_opset(model) < 10:  # Slice takes its bounds as inputs from opset 10
        return 0
    graph, ranks = model.graph, _ranks(model)
    _, fed, taken = _dataflow(graph)
    first, rest, end = (_new_name(f"keeps_batch_{part}", taken) for part in ("first", "rest", "end"))
    nodes, grown = [], 0
    for node in graph.node:
        joined = next((name for name in node.input if name in fed), None)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        rank = ranks.get(joined or "", 0)
        if node.op_type == "Concat" and joined is not None and rank >= 2 and axis % rank != 0:
            for index, name in enumerate(node.input):
                if name in fed or not name:
                    continue
                parts = ("joined_shape", "batch", "shape", "tail", "size", "tiled")
                joined_shape, batch, shape, tail, size, tiled = (
                    _new_name(f"{name}_{p}", taken) for p in parts
                )
                nodes += [
                    helper.make_node("Shape", [joined], [joined_shape]),
                    helper.make_node("Gather", [joined_shape, first], [batch], axis=0),
                    helper.make_node("Shape", [name], [shape]),
                    helper.make_node("Slice", [shape, rest, end], [tail]),
                    helper.make_node("Concat", [batch, tail], [size], axis=0),
                    helper.make_node("Expand", [name, size], [tiled]),
                ]
                node.input[index] = tiled
                grown += 1
        nodes.append(node)
    if grown:
        graph.initializer.extend(
            numpy_helper.from_array(np.array([value], np.int64), name)
            for name, value in ((first, 0), (rest, 1), (end, np.iinfo(np.int64).max))
        )
        del graph.node[:]
        graph.node.extend(nodes)
    return grown


def _batches_like_single_runs(
    fixed: CheckedModel,
    freed: CheckedModel,
    inputs: Sequence[TensorSpec],
    int_high: int,
    seed: int,
    tolerance: tuple[float, float],
) -> str | None:
    """None when a batch of ``PROBE_BATCH`` through ``freed`` answers as each sample alone through
    ``fixed``; otherwise what differed. Integers are drawn twice: from the model's range and from
    {0, 1}, where a padding mask has zeros that tell its samples apart (a Hugging Face mask built
    for one sample, the first, passed a draw of large integers, all nonzero, and not this one)."""
    specs = [replace(spec, shape=(-1, *spec.shape[1:])) for spec in inputs]
    for high in sorted({int_high, min(int_high, 2)}, reverse=True):
        failed = _compare_at_a_batch(
            fixed, freed, draw_inputs(specs, PROBE_BATCH, seed=seed, int_high=high), tolerance
        )
        if failed is not None:
            return failed
    return None


def _compare_at_a_batch(
    fixed: CheckedModel, freed: CheckedModel, feeds: Feeds, tolerance: tuple[float, float]
) -> str | None:
    names = [output.name for output in fixed.session.get_outputs()]
    try:
        together = ort_runner(freed.session)(feeds)
    except Exception as exc:
        raise_if_out_of_memory(exc, "running the model at a batch")
        return f"ONNX Runtime fails at a batch of {PROBE_BATCH}: {first_line(exc)}"
    alone_run = ort_runner(fixed.session)
    alone = [alone_run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(PROBE_BATCH)]
    for index, (name, got) in enumerate(zip(names, together, strict=True)):
        expected = np.concatenate([answer[index] for answer in alone])
        if got.shape != expected.shape:
            want = list(expected.shape)
            return f"output {name!r} has shape {list(got.shape)} for a batch of {PROBE_BATCH}, not {want}"
        if expected.dtype == object:
            same = bool(np.array_equal(got, expected))
        else:
            atol, rtol = tolerance
            same = compare_output(name, expected, got, atol=atol, rtol=rtol, batch_size=PROBE_BATCH).passed
        if not same:
            return f"output {name!r} of a batch of {PROBE_BATCH} differs from the samples run one at a time"
    return None
