"""platform/grafana: provisioning and dashboards, checked statically and against live scrapes.

Grafana is not packaged for Debian, so no Grafana runs here: the JSON is read
as Grafana reads it, every query's PromQL is parsed by promtool, and every
metric a panel or a template variable selects must be one a component exported
in a live scrape (tests/stack/conftest.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from inference_worker.contracts.report import DeviceStats
from inference_worker.metrics import WorkerMetrics
from tests.support.paths import ROOT
from tests.support.promql import grafana_to_promql, metric_names
from tests.support.stack import GPU_WORKER_SERIES, LiveExports, unexported

GRAFANA_DIR = ROOT / "platform" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.DOTALL)


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query target."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel["title"], target["expr"]


def variable_selectors(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(variable name, PromQL) of every query variable; ``label_values(expr, label)`` yields expr."""
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query)
        if match is None:
            yield variable["name"], query
        elif "," in match.group("args"):
            yield variable["name"], match.group("args").rsplit(",", 1)[0]


def queried_names(board: dict[str, Any]) -> set[str]:
    exprs = [expr for _, expr in panel_queries(board)] + [expr for _, expr in variable_selectors(board)]
    return set().union(*(metric_names(expr) for expr in exprs))


def board_names() -> set[str]:
    return set().union(*(queried_names(load(path)) for path in DASHBOARDS))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        (
            'sum by (deployment) (rate(kiln_worker_requests_total{outcome=~"5..|x"}[5m]))',
            {"kiln_worker_requests_total"},
        ),
        (
            'histogram_quantile(0.99, sum by (v, le) (rate(a_bucket{x="$v"}[$__rate_interval]))) > 1e-3',
            {"a_bucket"},
        ),
        ("a / on (deployment, variant) group_left max by (deployment) (b) > bool 0.5", {"a", "b"}),
        ('c offset 5m unless d{le="+Inf"} and on() vector(1)', {"c", "d"}),
        ("sum(rate(e[1h:5m])) without (instance)", {"e"}),
    ],
)
def test_metric_names_are_read_from_promql_without_functions_labels_or_keywords(
    expr: str, names: set[str]
) -> None:
    assert metric_names(expr) == names


def test_there_is_an_overview_and_a_per_deployment_dashboard_templated_by_deployment_and_variant() -> None:
    boards = {load(path)["uid"]: load(path) for path in DASHBOARDS}

    assert set(boards) == {"kiln-overview", "kiln-deployment"}
    variables = {v["name"]: v for v in boards["kiln-deployment"]["templating"]["list"]}
    assert {"datasource", "deployment", "variant"} <= set(variables)
    assert variables["variant"]["multi"] is True
    assert "$deployment" in variables["variant"]["query"]["query"]
    for _, expr in panel_queries(boards["kiln-deployment"]):
        if "$variant" not in expr and "kiln_" in expr:
            pytest.fail(f"a per-deployment query ignores the variant selection: {expr}")


def test_dashboards_are_valid_grafana_json_with_unique_ids_positions_and_datasource_variables() -> None:
    for path in DASHBOARDS:
        board = load(path)
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        assert board["uid"]
        assert board["title"]
        assert board["schemaVersion"] >= 36
        for panel in panels(board):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']} overflows"
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert panel["targets"], f"{path.name}: {panel['title']} has no query"
                assert {t["datasource"]["uid"] for t in panel["targets"]} == {"${datasource}"}


def test_provisioning_declares_the_prometheus_data_source_and_loads_the_dashboards_from_files() -> None:
    sources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "kiln.yml").read_text())
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "kiln.yml").read_text())

    (source,) = sources["datasources"]
    assert (sources["apiVersion"], source["type"], source["access"]) == (1, "prometheus", "proxy")
    assert source["url"] == "${KILN_PROMETHEUS_URL}"  # set by docker-compose (http://prometheus:9090)
    assert source["isDefault"] is True
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (.ci/setup.d/prometheus.sh)"
)
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule expressions: every query becomes one recording rule, Grafana's variables filled in.
    rules = [
        {"record": f"check:{index}", "expr": grafana_to_promql(expr)}
        for index, expr in enumerate(
            [expr for path in DASHBOARDS for _, expr in panel_queries(load(path))]
            + [expr for path in DASHBOARDS for _, expr in variable_selectors(load(path))]
        )
    ]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]})
    )

    checked = subprocess.run(
        ["promtool", "check", "rules", "queries.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


@pytest.mark.django_db  # the live scrape of the platform reads the test database
def test_every_platform_and_worker_metric_a_panel_queries_is_exported_in_a_live_scrape(
    live_exports: LiveExports,
) -> None:
    names = board_names()

    assert {"kiln_workers", "kiln_worker_request_duration_seconds_bucket", "django_db_execute_total"} <= names
    assert unexported(names, live_exports, gateway=False) == {}


@pytest.mark.django_db  # the live scrape of the platform reads the test database
def test_every_gateway_metric_a_panel_queries_is_exported_by_a_live_gateway(
    live_exports: LiveExports,
) -> None:
    names = board_names()
    assert {"kiln_gateway_requests_total", "kiln_gateway_shadow_argmax_agreements_total"} <= names
    if "gateway" in live_exports.missing:
        pytest.skip(f"gateway not checked: {live_exports.missing['gateway']}")

    assert unexported(names, live_exports, gateway=True) == {}


def test_gpu_metrics_a_cpu_worker_leaves_out_are_the_ones_the_worker_defines() -> None:
    metrics = WorkerMetrics("m", "1", max_batch_size=8)
    gpu = DeviceStats(index=0, memory_used_bytes=1, memory_total_bytes=2, utilization_ratio=0.5)
    metrics.device_stats = lambda: [gpu]
    exported = {
        family.name for family in text_string_to_metric_families(metrics.render(metrics.registry()).decode())
    }
    used = {name for name in board_names() if name.startswith("kiln_worker_device_")}

    assert used
    assert used <= GPU_WORKER_SERIES
    assert {name for name in exported if name.startswith("kiln_worker_device_")} == GPU_WORKER_SERIES
