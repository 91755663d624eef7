"""``manage.py demo``: a model made in code, two versions, a 90/10 deployment and a light load.

Safe to run twice: every step checks what exists first. Needs the platform running
(``make run``): conversions and replicas are the Celery worker's job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.env import env_float
from deployments.inputs import Split, VariantSpec, VersionTarget
from deployments.models import Deployment, WorkerState
from deployments.services import add_variant, create_deployment
from deployments.services.traffic import set_traffic_split
from registry.models import ModelVersion, RegisteredModel, VersionStatus
from registry.services import create_model, register_version

MODEL = "demo-classifier"
DEPLOYMENT = "demo"
SIGNATURE = {
    "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 16]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, 4]}],
}
CLASS_LABELS = ["approve", "review", "escalate", "decline"]


def _save_demo_model(path: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4), torch.nn.Softmax(dim=-1)
    ).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))


class Command(BaseCommand):
    help = "Register two versions of a demo model, deploy them 90/10 and start a light load."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each step")
        parser.add_argument(
            "--load-seconds",
            type=float,
            default=env_float("KILN_DEMO_LOAD_SECONDS", 1800.0, minimum=0.0),
            help="how long the load runs; 0: no load (default: $KILN_DEMO_LOAD_SECONDS, else 1800)",
        )
        parser.add_argument(
            "--rate",
            type=float,
            default=env_float("KILN_DEMO_LOAD_RATE", 20.0, minimum=0.1, maximum=500.0),
            help="load requests per second (default: $KILN_DEMO_LOAD_RATE, else 20)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        actor = User.objects.filter(is_superuser=True).order_by("id").first()
        if actor is None:
            raise CommandError("no superuser yet: run `make run` first (it creates one) or createsuperuser")
        timeout = options["timeout"]
        model = RegisteredModel.objects.filter(name=MODEL).first() or create_model(
            name=MODEL,
            owner=actor,
            description="A 16-feature, 4-class MLP made in code by `manage.py demo`.",
            tags=["demo"],
        )
        for seed in (1, 2)[model.versions.count() :]:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "demo.pt"
                _save_demo_model(path, seed)
                version = register_version(
                    model=model,
                    upload_path=path,
                    actor=actor,
                    signature=SIGNATURE,
                    class_labels=CLASS_LABELS,
                    description=f"demo weights, seed {seed}",
                    metadata={"source": "manage.py demo"},
                ).version
            self.stdout.write(f"registered {version}; converting…")
        versions = list(model.versions.order_by("version")[:2])
        for version in versions:
            self._wait(partial(self._converted, version), timeout, f"{version} to convert")
        deployment = Deployment.objects.filter(name=DEPLOYMENT).first()
        if deployment is None:
            deployment = create_deployment(
                name=DEPLOYMENT,
                model=model,
                actor=actor,
                description="the demo: 90/10 between two versions",
                variants=[VariantSpec(VersionTarget(versions[0].version), name="primary")],
            )
            self.stdout.write(f"deployed {DEPLOYMENT}; starting replicas…")
        if not deployment.variants.filter(name="candidate").exists():
            add_variant(
                deployment=deployment,
                spec=VariantSpec(VersionTarget(versions[1].version), name="candidate"),
                actor=actor,
            )
        self._wait(lambda: self._all_ready(deployment), timeout, "the replicas to be ready")
        split = {v.name: v.weight for v in deployment.variants.all()}
        if split != {"primary": 90, "candidate": 10}:
            set_traffic_split(
                deployment=deployment,
                split=Split.parse({"primary": 90, "candidate": 10}),
                actor=actor,
                reason="manage.py demo",
            )
        self.stdout.write(self.style.SUCCESS(f"{DEPLOYMENT} serves 90/10 at {settings.KILN_GATEWAY_URL}"))
        if options["load_seconds"] > 0:
            self._start_load(options["load_seconds"], options["rate"])
        self.stdout.write(
            f"Try it:\n  curl -s {settings.KILN_GATEWAY_URL}/v2/models/{DEPLOYMENT}/infer "
            "-H 'Content-Type: application/json' \\\n"
            '    -d \'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], '
            '"data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]}]}\'\n'
            f"  dashboard: {settings.KILN_PUBLIC_URL}/dashboard/deployments/{DEPLOYMENT}/"
        )

    def _converted(self, version: ModelVersion) -> bool:
        version.refresh_from_db()
        if version.status == VersionStatus.FAILED:
            raise CommandError(f"{version} failed to convert: {version.status_reason}")
        return version.status == VersionStatus.READY

    def _all_ready(self, deployment: Deployment) -> bool:
        deployment.refresh_from_db()
        if deployment.status == "failed":
            raise CommandError(f"deployment {deployment.name} failed: {deployment.status_reason}")
        return all(
            v.workers.filter(state=WorkerState.READY).count() >= v.replicas for v in deployment.variants.all()
        )

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise CommandError(f"timed out waiting for {what}: is the platform running (`make run`)?")
            time.sleep(1.0)

    def _start_load(self, seconds: float, rate: float) -> None:
        pid_file = Path(settings.VAR_DIR) / "demo-load.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), 0)
            except (OSError, ValueError):
                pass
            else:
                self.stdout.write("the demo load is running already")
                return
        log = (Path(settings.VAR_DIR) / "demo-load.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dashboard.demo_load",
                "--url",
                settings.KILN_GATEWAY_URL,
                "--deployment",
                DEPLOYMENT,
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
            ],
            cwd=settings.BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        pid_file.write_text(str(proc.pid))
        self.stdout.write(
            f"light load started ({rate:g} req/s for {seconds:.0f} s, pid {proc.pid}); "
            f"stop it with: kill {proc.pid}"
        )
