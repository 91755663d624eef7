"""The `kiln` CLI against the live platform: real server, real Celery worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from accounts.tokens import create_api_token
from registry.models import Alias, ModelVersion
from tests.support import torch_models as factories
from tests.support.paths import ROOT
from tests.support.services import CeleryWorker
from tests.support.versions import ready_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def kiln(
    *args: str, url: str, token: str | None, env: dict[str, str] | None = None, timeout: float = 300
) -> Any:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "GITHUB_", "CI_"))}
    environment.update({"KILN_URL": url, **({"KILN_TOKEN": token} if token else {}), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "kiln_client", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def token(owner: User) -> str:
    return create_api_token(user=owner)


def test_upload_with_wait_creates_the_model_converts_and_records_ci_metadata(
    live_server: Any, celery_worker: CeleryWorker, token: str, tmp_path: Path
) -> None:
    path = tmp_path / "cnn.pt"
    signature = factories.save_torchscript_cnn(path)
    signature["outputs"] = [{"name": "digit", "dtype": "float32", "shape": [-1, 10]}]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)), encoding="utf-8")
    env = {"GITHUB_SHA": "0123abcd", "GITHUB_REPOSITORY": "acme/models", "GITHUB_RUN_ID": "77"}

    result = kiln(
        "upload",
        "digits",
        str(path),
        "--signature",
        json.dumps(signature),
        "--labels",
        str(labels),
        "--create",
        "--wait",
        url=live_server.url,
        token=token,
        env=env,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "ready"
    assert "uploading" in result.stderr
    assert "v1: ready" in result.stderr
    version = ModelVersion.objects.get(model__name="digits", version=1)
    assert version.metadata["git_commit"] == "0123abcd"
    assert version.metadata["ci_run_url"] == "https://github.com/acme/models/actions/runs/77"
    # The declared output keeps its name through the conversion, so its labels still fit.
    assert [output["name"] for output in version.signature["outputs"]] == ["digit"]
    assert version.class_labels == {"digit": [f"digit {i}" for i in range(10)]}


def test_a_failed_conversion_exits_non_zero_with_the_reason(
    live_server: Any, celery_worker: CeleryWorker, token: str, tmp_path: Path
) -> None:
    path = tmp_path / "fft.pt"
    signature = factories.save_unexportable_torchscript(path)

    result = kiln(
        "upload",
        "spectral",
        str(path),
        "--signature",
        json.dumps(signature),
        "--create",
        "--wait",
        url=live_server.url,
        token=token,
    )

    assert result.returncode == 1
    assert "conversion failed" in result.stderr
    assert "failed failed" not in result.stderr
    assert factories.UNEXPORTABLE_OPERATOR in result.stderr
    assert "Traceback" not in result.stderr


def test_upload_and_convert_take_the_versions_own_parity_tolerance(
    live_server: Any, celery_worker: CeleryWorker, token: str, tmp_path: Path
) -> None:
    path = tmp_path / "cnn.pt"
    signature = factories.save_torchscript_cnn(path)
    exact_flags = ("--parity-atol", "0", "--parity-rtol", "0")
    connection = {"url": live_server.url, "token": token}

    exact = kiln(
        "upload",
        "strict",
        str(path),
        "--signature",
        json.dumps(signature),
        "--create",
        "--wait",
        *exact_flags,
        **connection,
    )
    loosened = kiln("convert", "strict", "1", "--parity-atol", "1e-4", "--wait", **connection)

    assert exact.returncode == 1, exact.stderr
    assert "parity check failed" in exact.stderr
    assert "atol=0 + rtol=0" in exact.stderr
    assert loosened.returncode == 0, loosened.stderr
    assert "conversion queued" in loosened.stderr
    assert json.loads(loosened.stdout)["status"] == "ready"
    version = ModelVersion.objects.get(model__name="strict")  # the rtol not given stays the version's
    assert (version.parity_atol, version.parity_rtol) == (1e-4, 0.0)


def test_an_onnx_file_exported_with_torchs_defaults_uploads_with_its_data_and_converts_batched(
    live_server: Any, celery_worker: CeleryWorker, token: str, tmp_path: Path
) -> None:
    # torch.onnx.export(model, (example,), "model.onnx"): weights in model.onnx.data, batch 1 fixed.
    path = tmp_path / "model.onnx"
    data = factories.save_onnx_as_exported_by_default(path)
    connection = {"url": live_server.url, "token": token}

    alone = kiln(
        "upload",
        "exported",
        str(path),
        "--create",
        "--external-data",
        str(tmp_path / "no.data"),
        **connection,
    )
    result = kiln("upload", "exported", str(path), "--create", "--wait", **connection)

    assert alone.returncode == 2, alone.stderr
    assert "--external-data" in alone.stderr
    assert "no such file" in alone.stderr
    assert result.returncode == 0, result.stderr
    assert f"with its external data {data.name}" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "ready"
    version = ModelVersion.objects.get(model__name="exported")
    assert version.signature["inputs"][0]["shape"] == [-1, *factories.IMAGE_SHAPE]
    assert version.report["dynamic_batch"] is True
    assert any("conversion made it the batch dimension" in w for w in version.report["warnings"])


def test_versions_and_aliases_and_api_errors_print_messages_not_tracebacks(
    live_server: Any, token: str, tmp_path: Path
) -> None:
    path = tmp_path / "cnn.onnx"
    factories.save_onnx_cnn(path)
    upload = kiln("upload", "digits", str(path), "--create", url=live_server.url, token=token)
    assert upload.returncode == 0, upload.stderr

    listed = kiln("versions", "digits", url=live_server.url, token=token)
    not_ready = kiln("alias", "digits", "production", "1", url=live_server.url, token=token)
    ModelVersion.objects.update(status="ready")  # as the conversion leaves it
    aliased = kiln("alias", "digits", "production", "1", url=live_server.url, token=token)
    missing = kiln("alias", "digits", "production", "9", url=live_server.url, token=token)
    refused = kiln("upload", "digits", str(tmp_path / "nope.onnx"), url=live_server.url, token=token)
    bad_split = kiln("traffic", "nothing-here", "a=90", "b=10", url=live_server.url, token=token)

    assert listed.returncode == 0
    assert listed.stdout.startswith("v1 ")
    assert not_ready.returncode == 1
    assert "not ready" in not_ready.stderr
    assert aliased.returncode == 0
    assert Alias.objects.get(name="production").version.version == 1
    assert (missing.returncode, missing.stderr.strip()) == (1, "kiln: model 'digits' has no version 9")
    assert refused.returncode == 2  # a file that is not there is bad usage
    assert "no such file" in refused.stderr
    assert bad_split.returncode == 1
    assert "no deployment named 'nothing-here'" in bad_split.stderr
    for result in (missing, refused, bad_split):
        assert "Traceback" not in result.stderr


def test_delete_removes_a_version_then_the_model_says_why_not_and_reruns_with_if_exists(
    live_server: Any, token: str, tmp_path: Path
) -> None:
    for seed in (1, 2):
        path = tmp_path / f"cnn-{seed}.onnx"
        factories.save_onnx_cnn(path, seed=seed)
        assert (
            kiln("upload", "digits", str(path), "--create", url=live_server.url, token=token).returncode == 0
        )
    ModelVersion.objects.update(status="ready")  # as the conversion leaves them
    assert kiln("alias", "digits", "production", "2", url=live_server.url, token=token).returncode == 0

    deleted = kiln("delete", "digits", "1", url=live_server.url, token=token)
    rerun = kiln("delete", "digits", "1", "--if-exists", url=live_server.url, token=token)
    gone = kiln("delete", "digits", "1", url=live_server.url, token=token)
    in_use = kiln("delete", "digits", "2", url=live_server.url, token=token)
    unclear = kiln("delete", "digits", url=live_server.url, token=token)
    whole = kiln("delete", "digits", "--whole-model", url=live_server.url, token=token)

    assert (deleted.returncode, deleted.stderr.strip()) == (0, "deleted digits v1")
    assert rerun.returncode == 0
    assert "not there" in rerun.stderr
    assert (gone.returncode, gone.stderr.strip()) == (1, "kiln: model 'digits' has no version 1")
    assert in_use.returncode == 1
    assert "version 2 of 'digits' is in use: alias 'production' points at it" in in_use.stderr
    assert unclear.returncode == 2
    assert whole.returncode == 0
    assert not ModelVersion.objects.exists()


def test_a_missing_or_wrong_token_is_a_clear_error(live_server: Any) -> None:
    missing = kiln("versions", "digits", url=live_server.url, token=None)
    wrong = kiln("versions", "digits", url=live_server.url, token="kiln_nope_nope")

    assert missing.returncode == 1
    assert "set KILN_TOKEN" in missing.stderr
    assert wrong.returncode == 1
    assert "invalid, expired or revoked API token" in wrong.stderr


def test_the_client_runs_without_django_and_builds_as_its_own_wheel(tmp_path: Path) -> None:
    blocked = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['django'] = None; sys.argv = ['kiln', '--help'];"
            "from kiln_client.cli import main; raise SystemExit(main())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    wheel = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "./kiln_client",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert blocked.returncode == 0, blocked.stderr
    assert "upload" in blocked.stdout
    assert wheel.returncode == 0, wheel.stderr
    assert list(tmp_path.glob("kiln_client-*.whl"))


def test_autoscale_sets_shows_and_turns_off_a_variant_s_policy_and_a_bad_value_is_a_message(
    live_server: Any, owner: User, token: str
) -> None:
    ready_version(owner)
    api = APIClient()
    api.force_authenticate(owner)
    body = {"name": "cnn-prod", "model": "cnn", "variants": [{"version": 1}]}
    assert api.post("/api/v1/deployments/", body, format="json").status_code == 201
    variant = ("cnn-prod", "primary")

    set_ = kiln(
        "autoscale", *variant, "--min", "0", "--max", "3", "--idle", "30", url=live_server.url, token=token
    )
    shown = kiln("autoscale", *variant, url=live_server.url, token=token)
    bad = kiln("autoscale", *variant, "--min", "5", url=live_server.url, token=token)
    off = kiln("autoscale", *variant, "--off", url=live_server.url, token=token)

    assert set_.returncode == 0, set_.stderr
    policy = json.loads(set_.stdout)["autoscaling"]
    assert (policy["min_replicas"], policy["max_replicas"], policy["idle_before_zero_s"]) == (0, 3, 30.0)
    assert json.loads(shown.stdout)["autoscaling"] == policy
    assert (bad.returncode, bad.stderr.strip()) == (1, "kiln: min_replicas: 5 is above max_replicas (3)")
    assert (off.returncode, off.stderr.strip()) == (0, "cnn-prod/primary: autoscaling off, 1 replica(s)")


def test_deploy_makes_the_deployment_once_and_rollout_and_promote_answer_with_the_platforms_rules(
    live_server: Any, owner: User, token: str
) -> None:
    ready_version(owner, model="digits")
    wider = ready_version(owner, model="digits", number=2)
    wider.signature["inputs"][0]["shape"] = [-1, 8]
    wider.save()
    Alias.objects.create(model=ModelVersion.objects.get(version=1).model, name="production",
                         version=ModelVersion.objects.get(version=1))  # fmt: skip
    args = ("deploy", "fraud", "--model", "digits", "--variant", "primary:alias=production")
    canary = ("--variant", "canary:version=2,weight=0", "--on-alias-move", "manual")

    created = kiln(*args, *canary, url=live_server.url, token=token)
    again = kiln(*args, url=live_server.url, token=token)
    kept = kiln(*args, "--exist-ok", url=live_server.url, token=token)
    bad_variant = kiln("deploy", "x", "--model", "digits", "--variant", "p:colour=red", url=live_server.url,
                       token=token)  # fmt: skip
    promote = kiln("promote", "fraud", "canary", url=live_server.url, token=token)
    started = kiln("rollout", "start", "fraud", "--candidate", "canary", url=live_server.url, token=token)
    missing = kiln("rollout", "start", "fraud", "--candidate", "nope", url=live_server.url, token=token)

    assert created.returncode == 0, created.stderr
    assert "deployment fraud created: primary, canary" in created.stderr
    assert "warning: variants 'primary' (v1) and 'canary' (v2) take different requests" in created.stderr
    from deployments.models import Deployment, Rollout

    deployment = Deployment.objects.get(name="fraud")
    assert deployment.on_alias_move == "manual"
    assert dict(deployment.variants.values_list("name", "role")) == {
        "primary": "stable",
        "canary": "candidate",
    }
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert kept.returncode == 0
    assert "kept as it is" in kept.stderr
    assert bad_variant.returncode == 2
    assert "NAME:alias=production" in bad_variant.stderr
    assert promote.returncode == 1
    assert "variant 'canary' has no ready replica" in promote.stderr
    assert started.returncode == 0, started.stderr
    rollout = Rollout.objects.get()
    assert (rollout.state, rollout.min_requests, rollout.baseline.name) == (
        "waiting_for_replicas",
        100,
        "primary",
    )
    assert missing.returncode == 1
    assert "no variant 'nope'" in missing.stderr


@pytest.fixture
def short_measurements(settings: Any) -> None:
    """Read by the Celery worker when it starts: request this fixture before it."""
    settings.KILN_ADVICE_MEASURE_SECONDS = 0.3
    settings.KILN_ADVICE_MEASURE_CLIENTS = [1, 4]
    settings.KILN_ADVICE_MEASURE_INSTANCES = [1]


def test_measure_waits_for_the_run_prints_its_cells_and_advise_quotes_them(
    owner: User,
    live_server: Any,
    short_measurements: None,
    celery_worker: CeleryWorker,
    token: str,
    tmp_path: Path,
) -> None:
    from tests.support.versions import stored_version

    version = stored_version(owner, tmp_path)
    version.report = {**version.report, "protocols": {"per_request_ms": {"http_binary": 0.01}}}
    version.save(update_fields=["report"])

    before = kiln("advise", "cnn", "1", "--target-rps", "100", url=live_server.url, token=token)
    measured = kiln("measure", "cnn", "1", "--wait", url=live_server.url, token=token)
    after = kiln("advise", "cnn", "1", "--target-rps", "100", url=live_server.url, token=token)
    missing = kiln("measure", "cnn", "7", url=live_server.url, token=token)

    assert before.returncode == 0, before.stderr
    assert "req/s per worker: measured not measured" in before.stdout
    assert before.stdout.strip().splitlines()[-1].startswith("Predicted, not measured")
    assert measured.returncode == 0, (measured.stderr, celery_worker.log_tail())
    assert "measured on " in measured.stdout
    assert len([line for line in measured.stdout.splitlines() if "http_binary" in line]) >= 2
    assert after.stdout.strip().splitlines()[-1].startswith("Measured on this machine at ")
    assert "req/s per worker: measured " in after.stdout
    assert (missing.returncode, missing.stderr.strip()) == (1, "kiln: model 'cnn' has no version 7")
