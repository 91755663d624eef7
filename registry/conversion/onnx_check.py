"""Check an ONNX file before it is trusted: checker, shape inference, ONNX Runtime load. Pure.

Every failure is a ``ChildError`` with code ``check_failed`` and the first line of
the reason (an ONNX upload with external data keeps ``external_data_refused``).
Strict shape inference is tried first; graphs it rejects although the lenient
mode accepts them (exporters emit a few such) pass with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from inference_worker.contracts.batch_dimension import METADATA_KEY, NOT_BATCH
from registry.conversion.channel import ChildError
from registry.conversion.inspection import load_onnx_checked
from registry.conversion.onnx_export import first_line, raise_if_out_of_memory
from registry.conversion.onnx_proto import unzip_maps
from registry.conversion.parity import Runner, TensorSpec, draw_inputs
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
    unzipped = unzip_maps(model)
    if unzipped:
        notes.append(
            f"{_named('output', list(unzipped))} a ZipMap's sequence of maps in the model and served as "
            "its tensor of probabilities, one row per sample in class order"
        )
    widened = widen_bfloat16_outputs(model)
    if widened or unzipped:
        onnx.save_model(model, path)
    if widened:
        notes.append(
            f"{_named('output', widened)} bfloat16 in the model and served as float32 (a Cast added at the "
            "end of the graph)"
        )
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


def export_notes(checked: CheckedModel, opset: int | None, inputs: Sequence[TensorSpec]) -> list[str]:
    """What the report says of the exported graph: an opset other than the one asked for, and the
    declared inputs the exporter left out because the model never reads them."""
    notes = []
    if opset is not None and checked.opset != opset:
        notes.append(f"opset {opset} was requested; the exporter produced opset {checked.opset}")
    fed = {i.name for i in checked.session.get_inputs()}
    ignored = [spec.name for spec in inputs if spec.name not in fed]
    if ignored:
        them = "them" if len(ignored) > 1 else "it"
        notes.append(
            f"{_named('input', ignored)} never read by the model, so the ONNX graph and the version's "
            f"signature leave {them} out: requests do not send {them}"
        )
    return notes


def _named(kind: str, names: Sequence[str]) -> str:
    """``output 'a' is`` or ``outputs 'a', 'b' are``."""
    many = len(names) > 1
    return f"{kind}{'s' if many else ''} {', '.join(map(repr, names))} {'are' if many else 'is'}"


def mark_if_not_batched(
    checked: CheckedModel,
    path: str,
    run: Runner,
    inputs: Sequence[TensorSpec],
    int_high: int,
    sizes: Sequence[int],
) -> str | None:
    """Run the model at the batch ``sizes`` above 1 that parity ran; when an output's first
    dimension is not the batch size (``x.flatten()``, a detector's variable count of boxes),
    record in the file that requests cannot be stacked (``contracts.batch_dimension``) and return
    why, for the report. None when every output follows the batch (or a run fails: parity ran these
    sizes, so that is the model's randomness, and its batching stays as its shapes say)."""
    import onnx

    names = [output.name for output in checked.session.get_outputs()]
    for batch in [size for size in sizes if size > 1]:
        try:
            answers = run(draw_inputs(inputs, batch, seed=0, int_high=int_high))
        except Exception:
            return None
        for name, answer in zip(names, answers, strict=True):
            rows = answer.shape[0] if answer.ndim else None
            if rows == batch:
                continue
            metadata = {entry.key: entry.value for entry in checked.model.metadata_props}
            onnx.helper.set_model_props(checked.model, {**metadata, METADATA_KEY: NOT_BATCH})
            onnx.save_model(checked.model, path)
            got = "no first dimension" if rows is None else f"{rows} rows"
            return (
                f"output {name!r} has {got} for a batch of {batch}: its first dimension is not the "
                "batch, so workers run each request alone (no dynamic batching)"
            )
    return None


def widen_bfloat16_outputs(model: Any) -> list[str]:
    """Give each bfloat16 graph output a Cast to float32 (numpy, and so the worker's protocols, has
    no bfloat16); the output keeps its name, what produced it is renamed. Returns the outputs cast."""
    import onnx

    graph = model.graph
    wanted = [o for o in graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16]
    inputs = {i.name for i in graph.input}
    wanted = [o for o in wanted if o.name not in inputs]  # a bfloat16 input is refused on its own
    if not wanted:
        return []
    taken = _names(graph)
    for output in wanted:
        inner = output.name + "_bfloat16"
        while inner in taken:
            inner += "_"
        taken.add(inner)
        _rename(graph, output.name, inner)
        graph.node.append(
            onnx.helper.make_node(
                "Cast", [inner], [output.name], to=onnx.TensorProto.FLOAT, name=inner + "_to_float32"
            )
        )
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return [o.name for o in wanted]


def _subgraphs(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield attribute.g
            yield from attribute.graphs


def _names(graph: Any) -> set[str]:
    """Every value and node name in ``graph`` and its subgraphs."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update((*node.input, *node.output, node.name))
    for subgraph in _subgraphs(graph):
        names |= _names(subgraph)
    return names


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename value ``old`` where it is made (the main graph: a node's output or an initializer) and
    wherever it is used (any node's input, subgraphs' outer-scope references included)."""
    for initializer in graph.initializer:
        if initializer.name == old:
            initializer.name = new
    for info in graph.value_info:
        if info.name == old:
            info.name = new
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
    _rename_uses(graph, old, new)


def _rename_uses(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    for subgraph in _subgraphs(graph):
        _rename_uses(subgraph, old, new)


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
