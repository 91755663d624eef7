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
