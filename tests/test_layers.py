"""The import structure, read from the source with ``ast`` (nothing is imported or run).

Layers go one way: config at the bottom, then accounts, registry, deployments, and dashboard /
observability on top; the root URLconf and the WSGI/ASGI/Celery entry points compose the apps.
No module imports itself back through others (every import counts, including one inside a
function). The data plane and the client import nothing of Django or the apps.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"config": 0, "accounts": 1, "registry": 2, "deployments": 3, "dashboard": 4, "observability": 4}
COMPOSITION_ROOTS = {"config.urls", "config.api", "config.wsgi", "config.asgi", "config.celery_app", "manage"}
PACKAGES = (*LAYERS, "inference_worker", "kiln_client")
SERVER_SIDE = {*LAYERS, "django", "rest_framework", "celery", "drf_spectacular", "django_prometheus"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts or "_generated" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            targets = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_itself_back_through_others() -> None:
    assert _cycles(_graph()) == []


def test_apps_import_only_downwards() -> None:
    upward = []
    for name, targets in _graph().items():
        layer = name.split(".")[0]
        if name in COMPOSITION_ROOTS or layer not in LAYERS:
            continue
        upward += [
            f"{name} -> {target}"
            for target in targets
            if target.split(".")[0] in LAYERS and LAYERS[target.split(".")[0]] > LAYERS[layer]
        ]
    assert upward == []


def test_the_data_plane_and_the_client_import_nothing_of_the_server() -> None:
    leaks = []
    for name, path in _modules().items():
        if name.split(".")[0] not in ("inference_worker", "kiln_client"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            roots = set()
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots = {node.module.split(".")[0]}
            leaks += [f"{name} imports {root}" for root in roots & SERVER_SIDE]
    assert leaks == []


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    """The checks themselves: a made-up graph with both faults is caught."""
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "b": set()}
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_over_400_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {lines}"
        for path in _modules().values()
        if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))
        and (lines := len(path.read_text().splitlines())) > 400
    ]
    assert long == []
