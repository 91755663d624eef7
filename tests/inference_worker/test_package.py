"""The package stays installable alone; its gRPC code is generated, never committed."""

from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inference_worker import build_protos
from tests.support.workers import RunningWorker

PACKAGE = Path(build_protos.__file__).resolve().parent
CONTROL_PLANE = {"django", "rest_framework", "config", "registry", "deployments", "accounts", "celery"}


def test_the_worker_imports_nothing_of_the_control_plane() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "_generated" in path.parts or "build" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not {name.split(".")[0] for name in names} & CONTROL_PLANE, f"{path.name} imports {names}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports (at any depth of its code), longest known name first."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_the_data_plane_s_modules_import_each_other_without_a_circle() -> None:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py") if not {"_generated", "build"} & set(p.parts)}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join([*trail[trail.index(name) :], name])
        if name not in done:
            for imported in sorted(graph[name]):
                visit(imported, (*trail, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())


def test_the_wheel_lists_every_subpackage_of_the_worker() -> None:
    config = tomllib.loads((PACKAGE / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("inference_worker", *init.parent.relative_to(PACKAGE).parts))
        for init in PACKAGE.rglob("__init__.py")
        if "build" not in init.parts
    }
    assert found | {"inference_worker._generated"} == listed


def test_generated_grpc_code_is_ignored_by_git() -> None:
    patterns = (PACKAGE.parent / ".gitignore").read_text().splitlines()
    assert "inference_worker/_generated/" in patterns


def test_build_protos_generates_importable_modules_into_a_directory(tmp_path: Path) -> None:
    written = build_protos.generate(tmp_path)
    assert sorted(p.name for p in written) == [
        "__init__.py",
        "grpc_service_pb2.py",
        "grpc_service_pb2_grpc.py",
    ]
    text = (tmp_path / "grpc_service_pb2.py").read_text()
    assert "_POOL.AddSerializedFile(" in text
    assert (
        "from inference_worker._generated import grpc_service_pb2"
        in (tmp_path / "grpc_service_pb2_grpc.py").read_text()
    )


def test_generated_modules_are_readable_by_every_user_as_the_umask_allows(tmp_path: Path) -> None:
    # An image generates them as root and runs as another user: mkstemp's 0600 made them unreadable.
    before = os.umask(0o022)
    try:
        written = build_protos.generate(tmp_path)
    finally:
        os.umask(before)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o644)}


def test_the_service_keeps_the_protocols_names() -> None:
    pb2, _ = build_protos.load()
    service = pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} >= {
        "ModelInfer",
        "ModelStreamInfer",
        "ModelMetadata",
        "ServerReady",
    }


def test_metrics_are_prometheus_histograms_labelled_with_model_and_version(mlp_worker: RunningWorker) -> None:
    httpx.post(
        mlp_worker.url + "/v2/models/mlp/infer",
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
    )
    response = httpx.get(mlp_worker.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name in (
        "request_duration_seconds",
        "queue_duration_seconds",
        "compute_duration_seconds",
        "batch_size",
    ):
        assert families[f"kiln_worker_{name}"].type == "histogram"
    for name in ("queue_depth", "in_flight_requests", "ready", "process_resident_memory_bytes"):
        assert families[f"kiln_worker_{name}"].type == "gauge"
    for family in families.values():
        for sample in family.samples:
            assert (sample.labels["model"], sample.labels["version"]) == ("mlp", "1"), sample
