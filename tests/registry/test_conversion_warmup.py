"""A version is not ready unless the worker can warm it up: the conversion records the input shapes it
validated, runs the worker's own warm-up on them, and every worker warms up with them (not with
dimensions of 1, which a 3x3 convolution over a dynamic height and width cannot run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inference_worker.contracts.warmup import REPORT_KEY, parse_warmup, warmup_text
from registry.conversion.convert import convert
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.support.torch_models import save_unpadded_conv


def _convert(tmp_path: Path) -> dict[str, Any]:
    source = tmp_path / "conv.pt"
    return convert(
        {
            "format": "torchscript",
            "source_path": str(source),
            "output_path": str(tmp_path / "conv.onnx"),
            "signature": save_unpadded_conv(source),
            "atol": 1e-4,
            "rtol": 1e-3,
            "parity_batch_sizes": [1, 3],
            "profile_max_batch": 2,
            "profile_runs": 1,
            "threads": 1,
            "opset": None,
            "seed": 7,
        }
    )


def _serve(model: Path, log: Path, *extra: str) -> str:
    """Start a worker on ``model``; its log once it is ready (then stopped) or once it exited."""
    argv = [
        sys.executable,
        "-m",
        "inference_worker",
        "serve",
        "--model-name",
        "conv",
        "--model-path",
        str(model),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*argv, "--http-port", "0", "--grpc-port", "-1", *extra], cwd=ROOT, stdout=out, stderr=out
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or "ready: model conv" in log.read_text(),
            timeout=120,
            message="the worker to be ready or to exit",
        )
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=60)
    return log.read_text()


def test_conversion_records_the_validated_shapes_and_the_worker_warms_up_with_them(tmp_path: Path) -> None:
    report = _convert(tmp_path)["report"]

    recorded = parse_warmup(report[REPORT_KEY])
    assert recorded.shapes == {"image": (-1, 3, 8, 8)}
    assert "warm-up" in report["durations_s"]

    model = tmp_path / "conv.onnx"
    old = _serve(model, tmp_path / "old.log")  # zeros, every dynamic dimension 1: the 3x3 kernel does not fit
    assert "warm-up failed" in old, old[-2000:]
    new = _serve(model, tmp_path / "new.log", "--warmup-inputs", warmup_text(recorded))
    assert "ready: model conv" in new, new[-2000:]
    assert "warm-up failed" not in new


@pytest.mark.django_db
def test_the_launch_spec_carries_the_recorded_shapes_to_the_worker(owner: Any) -> None:
    from deployments.models import Deployment, Variant, Worker
    from deployments.reconcile.spec import worker_spec
    from tests.support.versions import ready_version

    warmup = {"shapes": {"x": [-1, 4]}, "int_high": 100}
    version = ready_version(owner, report={REPORT_KEY: warmup})
    deployment = Deployment.objects.create(name="fraud", model=version.model, created_by=owner)
    variant = Variant.objects.create(deployment=deployment, name="a", version=version, pinned_version=version)
    worker = Worker.objects.create(variant=variant, version=version, backend="process")

    argv = worker_spec(deployment=deployment, variant=variant, worker=worker, token="t").launch.argv()

    flag = argv.index("--warmup-inputs")
    assert parse_warmup(json.loads(argv[flag + 1])) == parse_warmup(warmup)
