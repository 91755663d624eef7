"""Wheel build hook: generate the gRPC modules, then collect the package.

Everything else is declared in pyproject.toml. The modules are generated
before ``setup()`` runs because setuptools checks that ``_generated/`` exists
as soon as it reads the configuration (grpcio-tools is a build requirement).
``build_protos.py`` is loaded by path: the package is not importable while it
is being built.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_py import build_py  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent


def _generate_protos() -> None:
    spec = importlib.util.spec_from_file_location("_kiln_build_protos", HERE / "build_protos.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {HERE / 'build_protos.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(HERE / "_generated")


class BuildPy(build_py):
    """Leaves this file out of the package."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [module for module in modules if not (package == "inference_worker" and module[1] == "setup")]


_generate_protos()
setup(cmdclass={"build_py": BuildPy})
