"""platform/prometheus: the configuration, the alert rules and their unit tests, checked by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from deployments.backends.ports import free_port
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.support.promql import metric_names
from tests.support.stack import (
    DEPLOYMENT,
    LiveExports,
    Process,
    infer,
    start_worker,
    unexported,
    until_ok,
)

PROMETHEUS_DIR = ROOT / "platform" / "prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed: Debian's `prometheus` package has it (.ci/setup.d/prometheus.sh)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120, check=False
    )


def load(name: str) -> Any:
    return yaml.safe_load((PROMETHEUS_DIR / name).read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load("alerts.yml")["groups"] for rule in group["rules"] if "alert" in rule]


def scrape_job(name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in load("prometheus.yml")["scrape_configs"]}
    job: dict[str, Any] = jobs[name]
    return job


@needs_promtool
def test_promtool_accepts_the_prometheus_configuration_and_the_rule_files_it_loads() -> None:
    checked = promtool("check", "config", "prometheus.yml")

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    checked = promtool("check", "rules", "alerts.yml")

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


@needs_promtool
def test_every_alert_rule_passes_its_unit_tests() -> None:
    tested = promtool("test", "rules", "rules.test.yml")

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load("rules.test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}

    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_the_alert_rules_name_only_jobs_the_configuration_scrapes() -> None:
    jobs = {job["job_name"] for job in load("prometheus.yml")["scrape_configs"]}
    named: set[str] = set()
    for rule in alert_rules():
        for match in re.finditer(r'job\s*(=~?)\s*"([^"]*)"', rule["expr"]):
            named.update(match.group(2).split("|") if match.group(1) == "=~" else [match.group(2)])

    assert named
    assert named <= jobs


def test_workers_are_discovered_through_the_platform_with_a_bearer_token_read_from_a_file() -> None:
    job = scrape_job("kiln-workers")
    (discovery,) = job["http_sd_configs"]

    assert urlsplit(discovery["url"]).path == reverse("api:prometheus-targets")
    assert discovery["authorization"]["type"] == "Bearer"
    token_file = discovery["authorization"]["credentials_file"]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(PROMETHEUS_DIR / token_file)], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, f"{token_file} (a secret) must be ignored by git"
    assert urlsplit(discovery["url"]).netloc == scrape_job("kiln-platform")["static_configs"][0]["targets"][0]


@pytest.mark.django_db
def test_a_token_from_create_api_token_lets_prometheus_read_the_worker_targets(staff: User) -> None:
    out = StringIO()
    call_command("create_api_token", staff.username, "--name", "prometheus", stdout=out)
    token = out.getvalue().strip()
    url = reverse("api:prometheus-targets")

    anonymous = Client().get(url)
    discovered = Client().get(url, HTTP_AUTHORIZATION=f"Bearer {token}")

    assert anonymous.status_code == 401
    assert discovered.status_code == 200
    assert discovered["Content-Type"] == "application/json"
    assert discovered.json() == []


def _alert_metric_names() -> set[str]:
    return set().union(*(metric_names(rule["expr"]) for rule in alert_rules()))


@pytest.mark.django_db  # the live scrape of the platform reads the test database
def test_every_platform_and_worker_metric_the_alert_rules_query_is_exported(
    live_exports: LiveExports,
) -> None:
    names = _alert_metric_names()

    assert {"kiln_worker_requests_total", "kiln_reconcile_actions_total"} <= names
    assert unexported(names, live_exports, gateway=False) == {}


@pytest.mark.django_db  # the live scrape of the platform reads the test database
def test_every_gateway_metric_the_alert_rules_query_is_exported_by_a_live_gateway(
    live_exports: LiveExports,
) -> None:
    if "gateway" in live_exports.missing:
        pytest.skip(f"gateway not checked: {live_exports.missing['gateway']}")

    assert unexported(_alert_metric_names(), live_exports, gateway=True) == {}


def test_platform_holds_data_only_so_the_standard_library_platform_module_still_resolves() -> None:
    import platform

    files = [path for path in (ROOT / "platform").rglob("*") if path.is_file()]

    assert files
    assert [path for path in files if path.suffix in (".py", ".pyc", ".so")] == []
    assert Path(platform.__file__).parent != ROOT / "platform"


def _local_config(live_url: str, token_file: Path, gateway: str) -> dict[str, Any]:
    """prometheus.yml as shipped, pointed at this test's platform and scraping every second."""
    config: dict[str, Any] = load("prometheus.yml")
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    platform = urlsplit(live_url).netloc
    for job in config["scrape_configs"]:
        if job["job_name"] == "kiln-platform":
            job["static_configs"] = [{"targets": [platform]}]
        elif job["job_name"] == "kiln-gateway":
            job["static_configs"] = [{"targets": [gateway]}]
        else:
            for discovery in job["http_sd_configs"]:
                discovery["url"] = discovery["url"].replace(urlsplit(discovery["url"]).netloc, platform)
                discovery["refresh_interval"] = "1s"
                discovery["authorization"]["credentials_file"] = str(token_file)
    return config


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="no prometheus binary (Debian's prometheus package)"
)
def test_a_real_prometheus_finds_workers_through_the_platform_and_labels_their_series(
    live_server: Any, staff: User, tmp_path: Path
) -> None:
    from deployments.models import Deployment, Variant, Worker
    from tests.support.versions import ready_version

    worker, worker_url = start_worker(tmp_path)
    out = StringIO()
    call_command("create_api_token", staff.username, stdout=out)
    token_file = tmp_path / "kiln-api-token"
    token_file.write_text(out.getvalue().strip() + "\n")
    version = ready_version(staff, model="digits", number=3)
    deployment = Deployment.objects.create(name=DEPLOYMENT, model=version.model, created_by=staff)
    variant = Variant.objects.create(deployment=deployment, name="primary", version=version)
    row = Worker.objects.create(
        variant=variant, version=version, backend="process", state="ready", http_url=worker_url
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_local_config(live_server.url, token_file, f"127.0.0.1:{free_port()}")))
    port = free_port()
    server = Process(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    prometheus = f"http://127.0.0.1:{port}"
    try:
        assert infer(worker_url).status_code == 200
        until_ok(f"{prometheus}/-/ready", server, "prometheus")
        series = wait_for(
            lambda: _query(prometheus, 'kiln_worker_requests_total{outcome="success", protocol="http"}'),
            timeout=60,
            interval=0.5,
            message="worker series in Prometheus",
        )
        platform_up = wait_for(
            lambda: _query(prometheus, 'up{job="kiln-platform"} == 1'),
            timeout=30,
            message="the platform scraped",
        )
        gateway_up = wait_for(
            lambda: _query(prometheus, 'up{job="kiln-gateway"}'),
            timeout=30,
            message="the gateway's target scraped (and found down)",
        )
    finally:
        server.stop()
        worker.stop()

    (sample,) = series
    assert sample["metric"] == {
        "__name__": "kiln_worker_requests_total",
        "job": "kiln-workers",
        "instance": worker_url.removeprefix("http://"),
        "deployment": DEPLOYMENT,
        "variant": "primary",
        "worker": str(row.pk),
        "registered_model": "digits",
        "model": DEPLOYMENT,  # as the worker labels it: the name clients use
        "version": "1",  # as the worker labels it (this worker was started as version 1)
        "protocol": "http",
        "outcome": "success",
    }
    assert float(sample["value"][1]) == 1
    assert len(platform_up) == 1
    assert [float(s["value"][1]) for s in gateway_up] == [
        0
    ]  # nothing listens there: KilnComponentDown's case
