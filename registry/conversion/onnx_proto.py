"""Reading an ONNX file as protobuf, without running anything. Pure: no Django."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from registry.conversion.channel import ChildError


def parse_onnx(path: str) -> Any:
    """Parse an ONNX file as protobuf (its external data, if any, left where it is): the ModelProto."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ChildError(
            f"not a valid ONNX model ({type(exc).__name__}); accepted formats: TorchScript, "
            ".pt2 (torch.export) and ONNX",
            "invalid_artifact",
        ) from None
    if not model.graph.node or not model.opset_import or model.ir_version <= 0:
        raise ChildError(
            "not a valid ONNX model (no graph, opset or IR version); accepted formats: TorchScript, "
            ".pt2 (torch.export) and ONNX",
            "invalid_artifact",
        )
    return model


def external_entries(tensor: Any) -> dict[str, str] | None:
    """A tensor's external data entries (``location``, ``offset``, ``length``...), or None when its
    data lies inside the model."""
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.external_data:
        return None
    return {entry.key: entry.value for entry in tensor.external_data}


def all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of the model: initializers, sparse ones' values and indices, constants in
    node attributes, in subgraphs (If, Loop, Scan) and in the model's local functions. (onnx's own
    helper skips sparse tensors, which ONNX Runtime loads from external files all the same.)"""

    def sparse(tensors: Iterable[Any]) -> Iterator[Any]:
        for tensor in tensors:
            yield tensor.values
            yield tensor.indices

    def nodes(items: Iterable[Any]) -> Iterator[Any]:
        for node in items:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield from sparse([attribute.sparse_tensor])
                yield from sparse(attribute.sparse_tensors)
                if attribute.HasField("g"):
                    yield from graph(attribute.g)
                for subgraph in attribute.graphs:
                    yield from graph(subgraph)

    def graph(g: Any) -> Iterator[Any]:
        yield from g.initializer
        yield from sparse(g.sparse_initializer)
        yield from nodes(g.node)

    yield from graph(model.graph)
    for function in model.functions:
        yield from nodes(function.node)


def unzip_maps(model: Any) -> dict[str, list[str]]:
    """Serve a ZipMap's tensor in place of its maps: each graph output made by an ``ai.onnx.ml``
    ZipMap (a sequence of {class: probability} maps, which skl2onnx's classifiers answer by default
    and no inference protocol carries) becomes an Identity of the ZipMap's input, the float tensor
    of one row of probabilities per sample in class order, under the output's own name. Returns
    each such output's class labels (the ZipMap's, as text)."""
    import onnx

    graph = model.graph
    makers = {out: node for node in graph.node for out in node.output}
    labels: dict[str, list[str]] = {}
    for output in graph.output:
        node = makers.get(output.name)
        if node is None or node.op_type != "ZipMap" or node.domain != "ai.onnx.ml":
            continue
        attributes = {a.name: a for a in node.attribute}
        ints = attributes["classlabels_int64s"].ints if "classlabels_int64s" in attributes else []
        strings = attributes["classlabels_strings"].strings if "classlabels_strings" in attributes else []
        names = [str(i) for i in ints] + [s.decode("utf-8", "replace") for s in strings]
        graph.node.remove(node)
        graph.node.append(onnx.helper.make_node("Identity", [node.input[0]], [output.name]))
        batch = _first_input_dim(graph)
        output.type.CopyFrom(onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [batch, len(names)]))
        labels[output.name] = names
    return labels


def _first_input_dim(graph: Any) -> str | int | None:
    """The first graph input's first dimension (the batch, for a classifier's features)."""
    initializers = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            return dims[0].dim_param or (dims[0].dim_value if dims[0].HasField("dim_value") else None)
        break
    return None
