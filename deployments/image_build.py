"""Worker images without the ORM or the engine: what goes in (code hash, pins), the wheelhouse, the context.

An image holds one model version: the ONNX file and a small config under ``/opt/kiln/model``, and
the inference worker installed from a wheelhouse that the platform prepares with pip *before* the
build (``pip wheel`` of ``inference_worker/`` plus ``pip download`` of its pinned requirements), so
the build itself never reaches the network (it runs with ``network_mode=none``). Wheelhouses are
cached under ``KILN_WHEELHOUSE_DIR``, one per flavour and worker code hash.

The worker code hash covers the worker's sources, the flavour's Dockerfile and the pinned
requirements: when any of them changes, new images are built (and variants roll to them).
The build on the engine is ``deployments.backends.docker_images``; the row, ``services.images``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from deployments.errors import ImageBuildError

ROOT = Path(__file__).resolve().parent.parent
WORKER_DIR = ROOT / "inference_worker"
PLATFORM_DIR = ROOT / "platform"
LOCK_FILE = ROOT / "requirements.lock"
DOCKERFILES = {"cpu": PLATFORM_DIR / "worker-cpu.Dockerfile", "gpu": PLATFORM_DIR / "worker-gpu.Dockerfile"}
MODEL_PATH_IN_IMAGE = "/opt/kiln/model/model.onnx"
PYTHON_VERSION = "3.11"  # the wheels' target; the Dockerfiles check that the base image has it
_SKIPPED_DIRS = {"_generated", "build", "dist", "__pycache__"}
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
KEEP_WHEELHOUSES = 3  # per flavour: the current worker code and two before it

Log = Callable[[str], None]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK_FILE.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and not name.startswith("#"):
            pins[_normalize(name)] = f"{name}=={version.strip()}"
    return pins


def worker_requirements(flavour: str) -> list[str]:
    """The worker's direct requirements, pinned to the project's lock; GPU swaps in onnxruntime-gpu."""
    project = tomllib.loads((WORKER_DIR / "pyproject.toml").read_text())["project"]
    pins = _lock_pins()
    lines = []
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = _normalize(requirement.name)
        if flavour == "gpu" and name == "onnxruntime":
            continue  # onnxruntime-gpu provides the same module; both installed would clash
        marker = f"; {requirement.marker}" if requirement.marker else ""
        lines.append(f"{pins[name]}{marker}" if name in pins else str(requirement))
    # pip download evaluates markers against this interpreter, not the image's: redis needs
    # async-timeout below Python 3.11.3 (Debian bookworm ships 3.11.2), so it is always included.
    lines.append(pins.get("async-timeout", "async-timeout==5.0.1"))
    if flavour == "gpu":
        extra = (PLATFORM_DIR / "worker-gpu.requirements.txt").read_text().splitlines()
        lines += [line.strip() for line in extra if line.strip() and not line.lstrip().startswith("#")]
    return lines


def worker_source_files() -> list[Path]:
    """The files ``pip wheel inference_worker`` builds from (generated code and build output left out)."""
    files = []
    for directory, dirs, names in os.walk(WORKER_DIR):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info"))
        files += [Path(directory) / n for n in names if not n.endswith((".pyc", ".pyo"))]
    return sorted(files)


@cache
def worker_code_hash(flavour: str) -> str:
    """sha256 of the worker sources, the flavour's Dockerfile and pinned requirements (once per process).

    The prefix's number is the wheelhouse recipe's: 2 since the wheel's build environment takes the
    lock's grpcio-tools (wheelhouses and images of 1 may hold gRPC code the image's grpcio refuses).
    """
    digest = hashlib.sha256(f"kiln-worker-image/2 {flavour} python{PYTHON_VERSION}\n".encode())
    named = [(f"inference_worker/{p.relative_to(WORKER_DIR)}", p) for p in worker_source_files()]
    for name, path in [*named, (f"platform/{DOCKERFILES[flavour].name}", DOCKERFILES[flavour])]:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\n".join(worker_requirements(flavour)).encode())
    return digest.hexdigest()


def worker_version() -> str:
    """The worker package's version, read from its pyproject (the control plane never imports it)."""
    version: str = tomllib.loads((WORKER_DIR / "pyproject.toml").read_text())["project"]["version"]
    return version


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_PIP = [sys.executable, "-m", "pip"]


def _run(argv: list[str], *, log: Log, timeout_s: float, env: dict[str, str] | None = None) -> None:
    """Run a command (with ``env`` added to ours), sending each output line to ``log``; a failure
    raises with the command named."""
    log("$ " + " ".join(argv[2:] if argv[0] == sys.executable else argv))
    env = {
        **os.environ,
        "PIP_PROGRESS_BAR": "off",
        "PIP_NO_INPUT": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    deadline = time.monotonic() + timeout_s
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None  # noqa: S101 - stdout=PIPE above
        for line in proc.stdout:
            log(line.rstrip())
            if time.monotonic() > deadline:
                raise ImageBuildError(f"{' '.join(argv[2:4])} took longer than {timeout_s:.0f} s")
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if code != 0:
        raise ImageBuildError(f"preparing the wheelhouse failed: {' '.join(argv[2:4])} exited with {code}")


def prepare_wheelhouse(*, flavour: str, root: Path, arch: str, log: Log, timeout_s: float = 1200) -> Path:
    """The flavour's wheelhouse for this worker code: cached, or made with pip (a lock keeps one maker)."""
    platform_arch = _ARCHES.get(arch)
    if platform_arch is None:
        raise ImageBuildError(
            f"the Docker engine runs on {arch!r}; worker images exist for x86_64 and aarch64"
        )
    name = f"{flavour}-{platform_arch}-{worker_code_hash(flavour)[:20]}"
    target = root / name
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):
        if (target / ".complete").exists():
            log(f"wheelhouse {target} is ready (cached)")
            return target
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            _make_wheelhouse(flavour, work, platform_arch, log, timeout_s)
            (work / "wheels" / ".complete").write_text(time.strftime("%FT%T%z\n"))
            shutil.rmtree(target, ignore_errors=True)
            (work / "wheels").rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log(f"wheelhouse {target} is ready")
    _prune_wheelhouses(root, f"{flavour}-{platform_arch}-", keep=KEEP_WHEELHOUSES)
    return target


def _prune_wheelhouses(root: Path, prefix: str, *, keep: int) -> None:
    """Drop all but the newest ``keep`` wheelhouses of a flavour (older worker code)."""
    found = sorted(
        (p for p in root.glob(f"{prefix}*") if p.is_dir() and (p / ".complete").exists()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in found[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def write_constraints(path: Path) -> Path:
    """The lock's pins as a pip constraints file at ``path``, but onnxruntime's (the flavour picks it)."""
    pins = [line for line in LOCK_FILE.read_text().splitlines() if not line.startswith("onnxruntime==")]
    path.write_text("\n".join(pins) + "\n")
    return path


def build_worker_wheel(source: Path, wheels: Path, constraints: Path, *, log: Log, timeout_s: float) -> None:
    """``pip wheel`` of the worker's sources into ``wheels``, its build environment held to ``constraints``.

    The build generates the gRPC code with grpcio-tools, and that code refuses a grpcio older than
    the grpcio-tools that made it: the image installs the lock's grpcio, so the build must take the
    lock's grpcio-tools, not the newest. pip 25.3 and newer read build constraints from
    PIP_BUILD_CONSTRAINT only; older ones apply PIP_CONSTRAINT to the build environment.
    """
    _run(
        [*_PIP, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        log=log,
        timeout_s=timeout_s,
        env={"PIP_BUILD_CONSTRAINT": str(constraints), "PIP_CONSTRAINT": str(constraints)},
    )


def _make_wheelhouse(flavour: str, work: Path, arch: str, log: Log, timeout_s: float) -> None:
    source, wheels = work / "src", work / "wheels"
    shutil.copytree(
        WORKER_DIR,
        source,
        ignore=shutil.ignore_patterns(*_SKIPPED_DIRS, "*.egg-info", "*.pyc", "*.pyo"),
    )
    constraints = write_constraints(work / "constraints.txt")
    build_worker_wheel(source, wheels, constraints, log=log, timeout_s=timeout_s)
    (wheels / "requirements.txt").write_text("\n".join(worker_requirements(flavour)) + "\n")
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(28, 4, -1)]
    platforms += [f"manylinux2014_{arch}"] + (
        [f"manylinux2010_{arch}", f"manylinux1_{arch}"] * (arch == "x86_64")
    )
    _run(
        [
            *_PIP,
            "download",
            "--dest",
            str(wheels),
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            *[arg for platform_tag in platforms for arg in ("--platform", platform_tag)],
            "--requirement",
            str(wheels / "requirements.txt"),
            "--constraint",
            str(constraints),
        ],
        log=log,
        timeout_s=timeout_s,
    )


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_context(
    *, path: Path, flavour: str, wheelhouse: Path, onnx_path: Path, model_config: dict[str, Any]
) -> None:
    """The build context as one tar: the Dockerfile, the wheelhouse, the ONNX file and its config."""
    with tarfile.open(path, "w") as tar:
        tar.add(DOCKERFILES[flavour], arcname="Dockerfile", filter=_tar_filter)
        for wheel in sorted(wheelhouse.iterdir()):
            if wheel.name != ".complete":
                tar.add(wheel, arcname=f"wheelhouse/{wheel.name}", filter=_tar_filter)
        tar.add(onnx_path, arcname="model/model.onnx", filter=_tar_filter)
        config = json.dumps(model_config, indent=2, sort_keys=True).encode() + b"\n"
        info = _tar_filter(tarfile.TarInfo("model/model.json"))
        info.size, info.mtime = len(config), int(time.time())
        tar.addfile(info, io.BytesIO(config))
