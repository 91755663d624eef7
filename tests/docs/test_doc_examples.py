"""Executable documentation: every shell and Python example of the README and docs/ runs, in order,
against a live platform (web, Celery worker and beat, gateway, model workers).

A block is left out only with ``<!-- norun: reason -->`` on the line before it; anything else that
does not run as written fails here. Long waits in the examples read environment overrides
(``KILN_DEMO_LOAD_SECONDS``, ``KILN_DEMO_LOAD_RATE``, ``KILN_EXAMPLE_HOLD_S``), set below so the
run fits CI.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.support.doc_blocks import FENCE, NORUN, RUNNABLE, Block, all_blocks, blocks_of
from tests.support.paths import ROOT
from tests.support.services import Platform

# Fenced blocks that are not programs: drawings, CI files, configuration excerpts.
NOT_PROGRAMS = {"", "text", "yaml", "yml", "json", "toml", "ini", "dockerfile", "promql"}
BLOCK_TIMEOUT_S = 420
# What the examples' environment overrides are set to here (each is documented beside its example).
OVERRIDES = {"KILN_DEMO_LOAD_SECONDS": "600", "KILN_DEMO_LOAD_RATE": "100", "KILN_EXAMPLE_HOLD_S": "3"}


@pytest.fixture(autouse=True)
def _short_measurements(settings: Any) -> None:
    """``kiln measure``'s cells, short (the README names the setting): read by the platform's Celery
    worker when it starts, so set before it."""
    settings.KILN_ADVICE_MEASURE_SECONDS = 0.5
    settings.KILN_ADVICE_MEASURE_CLIENTS = [1, 8]
    settings.KILN_ADVICE_MEASURE_INSTANCES = [1]


def test_every_fenced_block_is_a_program_to_run_or_says_why_not() -> None:
    problems = []
    for block in all_blocks():
        if block.kind is None and block.lang not in NOT_PROGRAMS:
            problems.append(f"{block.where}: unknown language {block.lang!r}")
        if block.norun is not None and not block.norun:
            problems.append(f"{block.where}: `norun:` without a reason")
        if block.norun is not None and block.kind is None:
            problems.append(f"{block.where}: `norun:` on a block that is not a program")
    assert problems == []
    assert sum(1 for block in all_blocks() if block.kind and block.norun is None) >= 10


def test_blocks_are_read_with_their_norun_reason_and_without_list_indentation(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Intro\n\n<!-- norun: starts a server -->\n```sh\nmake run\n```\n\n"
        "- item:\n\n  ```python\n  print(1)\n  ```\n\n```\n┌ drawing\n```\n"
    )
    blocks = blocks_of(doc)
    assert [(b.kind, b.code, b.norun) for b in blocks] == [
        ("sh", "make run\n", "starts a server"),
        ("python", "print(1)\n", None),
        (None, "┌ drawing\n", None),
    ]
    assert FENCE.match("  ```sh")
    assert NORUN.match("<!-- norun: x -->")
    assert RUNNABLE["bash"] == "sh"


class Runner:
    """Runs blocks as a reader does in one terminal: exported variables and functions carry over."""

    def __init__(self, env: dict[str, str], state: Path) -> None:
        self.env = env
        self.state = state
        state.write_text("")

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        if block.kind == "python":
            argv = [str(ROOT / ".venv/bin/python"), "-c", block.code]
        else:
            script = (
                f"source {self.state}\nset -eo pipefail\n{block.code}\n"
                f"{{ declare -px; declare -f; }} > {self.state}.next\n"
            )
            argv = ["bash", "--norc", "--noprofile", "-c", script]
        result = subprocess.run(
            argv,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        next_state = Path(f"{self.state}.next")
        if block.kind == "sh" and result.returncode == 0:
            # Read-only shell variables cannot be declared again; the rest carries over.
            lines = [
                line
                for line in next_state.read_text().splitlines()
                if not line.startswith(("declare -rx", "declare -ax BASH", "declare -x SHLVL"))
            ]
            self.state.write_text("\n".join(lines) + "\n")
        return result


def _left_behind() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}


@pytest.fixture
def files_the_examples_make() -> Iterator[None]:
    """The examples write files in the checkout (model.pt, a token file): remove the ones they
    added and put back the ones they overwrote."""
    before = _left_behind()
    dirs_before = {path for path in ROOT.iterdir() if path.is_dir()}
    kept = {
        name: (ROOT / name).read_bytes()
        for name in before
        if (ROOT / name).is_file() and (ROOT / name).stat().st_size < 1 << 20
    }
    yield
    for name in _left_behind() - before:
        path = ROOT / name
        if path.is_file() and not {"__pycache__", "test-artifacts", ".pytest_cache"} & set(path.parts):
            path.unlink()
    for name, content in kept.items():
        if (ROOT / name).read_bytes() != content:
            (ROOT / name).write_bytes(content)
    for path in {path for path in ROOT.iterdir() if path.is_dir()} - dirs_before:  # a generated client's
        if all(f.is_dir() or "__pycache__" in f.parts for f in path.rglob("*")):
            shutil.rmtree(path)


def _install_client(prefix: Path) -> dict[str, str]:
    """``pip install ./kiln_client`` as the docs say, offline, into a prefix of this test's own."""
    pip = [str(ROOT / ".venv/bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--prefix", str(prefix), "./kiln_client"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (site,) = prefix.glob("lib/python*/site-packages")
    return {"PATH": f"{prefix / 'bin'}:{ROOT / '.venv/bin'}:{os.environ['PATH']}", "PYTHONPATH": str(site)}


def _stop_demo_load(var_dir: Path) -> None:
    pid_file = var_dir / "demo-load.pid"
    if pid_file.exists():
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.django_db(transaction=True)
def test_every_example_of_the_readme_and_docs_runs_as_written(
    platform: Platform, settings: Any, tmp_path: Path, files_the_examples_make: None
) -> None:
    admin = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    env = {
        **platform.worker.env,
        "KILN_URL": platform.url,
        "KILN_PUBLIC_URL": platform.url,
        "KILN_GATEWAY_URL": platform.gateway.url,
        "KILN_GATEWAY_GRPC_TARGET": platform.gateway.grpc,
        **_install_client(tmp_path / "client"),
        **OVERRIDES,
    }
    env.pop("KILN_TOKEN", None)
    runner = Runner(env, tmp_path / "shell-state")
    timings = []
    try:
        for block in all_blocks():
            if block.kind is None or block.norun is not None:
                continue
            started = time.monotonic()
            result = runner.run(block)
            timings.append(f"{time.monotonic() - started:6.1f} s  {block.where}")
            if result.returncode != 0:
                pytest.fail(
                    f"the example at {block.where} failed (exit {result.returncode}):\n{block.code}\n"
                    f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}\n"
                    f"--- celery worker ---\n{platform.worker.log_tail(40)}"
                )
        # The deployments the examples made: the page's "Call it with curl" answers as pasted.
        for deployment in ("demo", "digits"):
            _page_curl_answers(admin, deployment)
    finally:
        _stop_demo_load(Path(env["KILN_VAR_DIR"]))
        print("\n".join(timings))


def _page_curl_answers(user: User, deployment: str) -> None:
    client = Client()
    client.force_login(user)
    page = client.get(reverse("deployments:detail", args=[deployment])).content.decode()
    found = re.search(r"<pre[^>]*data-curl-example[^>]*>(.*?)</pre>", page, re.DOTALL)
    assert found, f"no curl example on the page of {deployment}"
    command = html.unescape(found[1])
    result = subprocess.run(
        ["bash", "-c", f"{command} -w '\\n%{{http_code}}'"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    body, _, code = result.stdout.rpartition("\n")
    assert code == "200", f"{command}\n-> {result.stdout[-500:]} {result.stderr[-500:]}"
    assert json.loads(body)["outputs"]
