"""Bad usage of `kiln` exits 2 with one line, before any request (the platform here is unreachable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update({"KILN_URL": "http://127.0.0.1:9", "KILN_TOKEN": "kiln_unused"})
    return subprocess.run(
        [sys.executable, "-m", "kiln_client", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("upload", "digits", "/nonexistent/model.pt"), "kiln: /nonexistent/model.pt: no such file"),
        (("upload", "digits", "/"), "kiln: /: a directory, not a model file"),
        (("traffic", "fraud", "a90"), "kiln: 'a90': write splits as variant=weight, e.g. a=90 b=10"),
        (("alias", "digits", "production"), "kiln: give the version to point the alias at, or --delete"),
        (("rollout", "start", "fraud"), "kiln: rollout start: --candidate is required"),
        (
            ("rollout", "start", "fraud", "--candidate", "b", "--steps", "5,half"),
            "kiln: --steps: write percentages as 5,25,50,100, not '5,half'",
        ),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    result = kiln(*args)

    assert (result.returncode, result.stderr.strip()) == (2, message)


def test_a_bad_signature_argument_is_bad_usage(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the signature is checked first")
    result = kiln("upload", "digits", str(model), "--signature", "{not json")

    assert result.returncode == 2
    assert result.stderr.startswith("kiln: --signature: not valid JSON")


def test_argparse_errors_exit_2_as_well() -> None:
    assert kiln("upload").returncode == 2
