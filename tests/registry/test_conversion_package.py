"""The conversion child is its own package: no Django, nothing of the apps, run with ``python -m``.

The child opens untrusted models under a memory limit; Django there would cost start-up time and
memory, and an app import would drag settings and the database into the sandbox.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import registry.conversion

PACKAGE = Path(registry.conversion.__file__).resolve().parent
ROOT = PACKAGE.parents[1]
CONTROL_PLANE = {"django", "rest_framework", "celery", "config", "accounts", "deployments", "dashboard"}

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import registry.conversion as package
names = sorted(m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."))
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"django", "rest_framework", "celery"})
apps = sorted(
    m for m in sys.modules
    if m.split(".")[0] in {"config", "accounts", "deployments", "dashboard"}
    or (m.startswith("registry.") and not m.startswith("registry.conversion"))
)
print(json.dumps({"imported": names, "django": loaded, "apps": apps}))
"""


def test_importing_every_module_of_the_child_in_a_fresh_interpreter_loads_no_django() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)

    assert "registry.conversion.__main__" in result["imported"]
    assert "registry.conversion.convert" in result["imported"]
    assert "registry.conversion.inspection" in result["imported"]
    assert result["django"] == []
    assert result["apps"] == []


def test_no_module_of_the_child_imports_django_or_the_apps_even_inside_a_function() -> None:
    """Lazy imports (torch, onnx) sit inside functions; this reads them all, not only the top level."""
    checked = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                outside = name.startswith("registry") and not name.startswith("registry.conversion")
                assert name.split(".")[0] not in CONTROL_PLANE, f"{path.name} imports {name}"
                assert not outside, f"{path.name} imports {name} from the Django side of registry"
        checked.append(path.name)
    assert {"__main__.py", "convert.py", "parity.py", "torch_sources.py"} <= set(checked)


def test_the_child_runs_as_a_module_and_reports_an_unknown_command_as_a_failure(tmp_path: Path) -> None:
    request, result = tmp_path / "request.json", tmp_path / "result.json"
    request.write_text("{}", encoding="utf-8")

    done = subprocess.run(
        [sys.executable, "-m", "registry.conversion", "no-such-command", str(request), str(result)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0
    assert json.loads(result.read_text(encoding="utf-8")) == {
        "ok": False,
        "error": "KeyError: 'no-such-command'",
        "code": "failed",
    }
