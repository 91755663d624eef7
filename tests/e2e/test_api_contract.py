"""The API answers exactly as its OpenAPI schema says: schemathesis fuzzes every operation.

Against a live platform (the web app on a real server, PostgreSQL, Redis), authenticated as an
administrator, at least 100 generated requests per operation, none excluded, with hostile query
strings on every GET (tests/support/schemathesis_hooks.py); the examples and fuzzing phases
(the coverage phase triples the run's length). Checks: no server error, and the
status code, content type and body of every answer are ones the schema documents. A fixed seed
and deterministic generation make a failure reproducible: the output names the request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from accounts.tokens import create_api_token
from tests.support.paths import ROOT
from tests.support.versions import stored_version

# The run's own budget: the suite-wide timeout is too short for it on a small machine.
BUDGET_S = float(os.environ.get("KILN_API_CONTRACT_TIMEOUT_S", "1500"))
EXAMPLES = int(os.environ.get("KILN_API_CONTRACT_EXAMPLES", "100"))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUDGET_S + 120), pytest.mark.django_db(transaction=True)]


def seed(staff: User, tmp_path: Path) -> None:
    """Objects for the fuzzer to find: a model with a converted version and an alias, a deployment."""
    stored_version(staff, tmp_path)
    api = APIClient()
    api.force_authenticate(staff)
    assert api.put("/api/v1/models/cnn/aliases/production/", {"version": 1}, format="json").status_code == 200
    created = api.post(
        "/api/v1/deployments/", {"name": "web", "model": "cnn", "variants": [{"version": 1}]}, format="json"
    )
    assert created.status_code == 201, created.content


def test_every_operation_answers_as_the_schema_says(staff: User, live_server: Any, tmp_path: Path) -> None:
    seed(staff, tmp_path)
    token = create_api_token(user=staff)
    headers = {"Authorization": f"Bearer {token}"}
    # The schema as the live server serves it, read once with a generous timeout (schemathesis
    # gives its own fetch 10 s, too little on a busy machine the first time it is generated).
    served = httpx.get(f"{live_server.url}/api/schema/?format=json", headers=headers, timeout=120)
    assert served.status_code == 200, served.text[:500]
    schema_file = tmp_path / "openapi.json"
    schema_file.write_text(served.text)
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        str(schema_file),
        *("--url", live_server.url),
        *("--header", f"Authorization: Bearer {token}"),
        *("--checks", CHECKS),
        *("--phases", "examples,fuzzing"),
        *("--max-examples", str(EXAMPLES)),
        *("--seed", "20261204"),
        "--generation-deterministic",
        *("--workers", os.environ.get("KILN_API_CONTRACT_WORKERS", "2")),
        *("--request-timeout", "60"),
        "--no-color",
        *("--report", "junit"),
        *("--report-junit-path", str(tmp_path / "schemathesis-junit.xml")),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    result = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BUDGET_S, check=False
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    sys.stderr.write(f"\nschemathesis ran {elapsed:.0f} s\n{output[-3000:]}\n")

    assert result.returncode == 0, output[-30_000:]
    count = _operations(served.json())
    assert f"Selected: {count}/{count}" in output  # every operation, none excluded
    assert f"Tested: {count}" in output


def _operations(schema: dict[str, Any]) -> int:
    return sum(len(methods) for methods in schema["paths"].values())
