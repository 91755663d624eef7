"""A ``torch.export`` program's input and output trees, read from the archive. Pure but for
``read_unknown_as_dicts``, which registers with torch's pytree.

``torch.export.save`` records how a program's inputs and outputs nest (``in_spec``, ``out_spec``
in the program's JSON): a string ``[protocol, node]``, each node ``{"type": the container's
registered name, "context": its JSON text (a dict's keys), "children_spec": [nodes]}``. The
upload check (``registry.export_checks``) walks these trees before anything loads the archive;
the child reads them again to load what the check let through:

transformers registers its ``ModelOutput`` classes (``SequenceClassifierOutput``...) as pytree
nodes, and a program exported from a Hugging Face model records its answer by that class's name
with its keys as the context. Loading it without the class fails ("Deserializing ... in pytree is
not registered"), and importing what a file names would run code of the file's choosing. Each
such unknown name whose context is a list of keys is registered as a dict with those keys: the
program answers a dict, and its keys name the version's outputs (``logits``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from typing import Any

SPEC_KEYS = ("in_spec", "out_spec")


class InvalidTreeError(ValueError):
    """A tree spec that is not ``[protocol, node]`` of nodes."""


def spec_nodes(spec: Any) -> Iterator[tuple[Any, Any]]:
    """``(type, context)`` of each node of one ``in_spec``/``out_spec`` string, the context parsed
    as PyTorch parses it (JSON text; a context that is not JSON, a namedtuple's name, is None)."""
    try:
        document = json.loads(spec) if isinstance(spec, str) else None
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, list) or len(document) != 2:
        raise InvalidTreeError("a tree spec is not [protocol, tree]")
    stack = [document[1]]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("children_spec", []), list):
            raise InvalidTreeError("a tree spec node is not {type, context, children_spec}")
        yield node.get("type"), _parsed(node.get("context"))
        stack.extend(node.get("children_spec", []))


def _parsed(context: Any) -> Any:
    if not isinstance(context, str):
        return context
    try:
        return json.loads(context)
    except (ValueError, RecursionError):
        return None


def json_fields(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of a JSON document, depth first (an explicit stack: no recursion limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                yield key, inner
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def program_specs(archive: zipfile.ZipFile) -> Iterator[str]:
    """Every ``in_spec``/``out_spec`` string of the archive's programs (whose size the upload
    check bounded)."""
    for name in archive.namelist():
        if "/models/" in name and name.endswith(".json"):
            document = json.loads(archive.read(name))
            yield from (v for k, v in json_fields(document) if k in SPEC_KEYS and isinstance(v, str))


def read_unknown_as_dicts(path: str) -> list[str]:
    """Register each container the archive's trees name that torch does not know, and whose
    context is a list of string keys, as a dict with those keys; the unknown names it could not
    read so (their context is something else), which the program cannot be loaded with."""
    from torch.utils import _pytree

    known = set(_pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE)
    readable: set[str] = set()
    unreadable: set[str] = set()
    try:
        with zipfile.ZipFile(path) as archive:
            for spec in program_specs(archive):
                for kind, context in spec_nodes(spec):
                    if isinstance(kind, str) and kind not in known:
                        (readable if _keys(context) is not None else unreadable).add(kind)
    except (OSError, ValueError, zipfile.BadZipFile):
        return []  # torch.export.load says what is wrong with the archive
    for kind in sorted(readable - unreadable):
        _register(kind)
    return sorted(unreadable)


def _keys(context: Any) -> list[str] | None:
    if isinstance(context, list) and all(isinstance(key, str) for key in context):
        return context
    return None


def _register(kind: str) -> None:
    from torch.utils import _pytree

    stand_in: type[dict[str, Any]] = type(kind.rpartition(".")[2] or "Container", (dict,), {})

    def from_context(text: str) -> list[str]:
        keys = _keys(_parsed(text))
        if keys is None:
            raise InvalidTreeError(f"{kind}: its context is not a list of keys")
        return keys

    def with_keys(value: dict[str, Any]) -> tuple[list[tuple[Any, Any]], list[str]]:
        return [(_pytree.MappingKey(key), item) for key, item in value.items()], list(value)

    _pytree.register_pytree_node(
        stand_in,
        lambda value: (list(value.values()), list(value)),
        lambda values, keys: stand_in(zip(keys, values, strict=True)),
        serialized_type_name=kind,
        to_dumpable_context=json.dumps,
        from_dumpable_context=from_context,
        flatten_with_keys_fn=with_keys,
    )
