"""No module outside ``inference_worker/contracts/`` spells a contract's wire keys.

A contract's keys are read from the contract itself: every key of its encoded
sample record (``tests/support/contract_samples.py`` fills every field), the batching option names,
and the worker's flags and variables for the launch spec. A key is *spelled*
where code uses it as a string literal to build or read a message: a dict
display key, a subscript, the first argument of ``.get``/``.pop``/
``.setdefault``, the name in ``getattr``/``setattr``/``hasattr``, the left of
``in``. Flags and variables count anywhere (a command line is a list).

``SHARED`` names the keys that other interfaces of the platform use for their
own fields (the REST and dashboard APIs, the Open Inference Protocol, the
gateway's own HTTP answers) and plain words any message has; each is there for
the reason beside it, and nothing else is exempt. Scanned: every Python module
of the project but the contracts, tests, migrations, generated code and
``bench/`` (benchmarks start the programs as an operator does, from their
documented command lines); and the templates and the dashboard's JavaScript,
which must not list a batching option by name (pages take them from the table).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference_worker.contracts.activation import encode_activation
from inference_worker.contracts.batching import BATCHING, encode_batching
from inference_worker.contracts.gateway_stats import encode_snapshot
from inference_worker.contracts.gateway_table import encode_gateway_table
from inference_worker.contracts.report import encode_report
from inference_worker.contracts.routing import encode_table
from inference_worker.contracts.worker_options import ENV_PREFIX, SERVE
from inference_worker.gateway.config import GATEWAY
from tests.support import contract_samples as samples
from tests.support.paths import ROOT

SKIPPED = {"tests", "migrations", "_generated", "contracts", "bench", "node_modules", "static_build", "build"}

WORDS = {"name", "version", "model", "id", "url", "state", "start", "end", "schema", "le", "counts"}
WORDS |= {"p50", "p95", "p99"}
"""Words every message and API uses (a histogram's ``le``/``counts`` are also how reports are stored,
the quantile names are every latency figure's, the shadow API's too)."""
SHARED = WORDS | {
    # the REST API's variants and the traffic API's splits name these fields of a Variant too
    "deployments",
    "variants",
    "replicas",
    "weight",
    "shadow_percent",
    "grpc",  # a protocol's name in the conversion report's codec costs and the serving advice
    "model_name",  # the Open Inference Protocol's metadata answer
    "instances",  # the KServe v1 request's rows; the serving advice's instance count
    "requests",  # every API that counts requests
    "batches",  # the conversion report's latency profile
    # the dashboard's JSON (a Report column's figures) and the shadow API's answer
    "queue_depth",
    "cpu_percent",
    "rss_bytes",  # the series API's per-worker figures
    "mean_batch_size",
    "errors",
    "shadow",
    "sent",
    "dropped",
    "compared",
    "responses",
    "live_latency_ms",
    "routing_table_version",  # the gateway's readiness answer (/v2/health/ready)
    "deployment",  # the audit log's and the API's records name a deployment and its variant too
    "variant",
    "started_at",  # timestamps most of the platform's models have (a row job's, a worker's)
    "updated_at",
}


def keys(value: Any) -> set[str]:
    """Every key of a decoded JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value).union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value))
    return set()


def wire_keys() -> dict[str, set[str]]:
    """Each contract's keys, less the samples' data used as keys (names of deployments, outcomes, codes)."""
    return {
        "routing table": keys(encode_table(samples.TABLE)) - {"fraud"},
        "worker report": keys(encode_report(samples.REPORT))
        - {"success", "invalid_argument", "http", "grpc"},
        "gateway stats": keys(encode_snapshot(samples.SNAPSHOT)) - {"fraud", "b", "200", "503"},
        "gateway table": keys(encode_gateway_table(samples.GATEWAY_TABLE)),
        "batching": keys(encode_batching(samples.BATCHING)),
        "activation": keys(encode_activation(samples.ACTIVATION)),
    }


def launch_words() -> set[str]:
    """The worker's flags that only ``serve`` has, and every ``KILN_WORKER_`` variable."""
    shared_flags = {GATEWAY[name].flag for name in GATEWAY}
    flags = {SERVE[name].flag for name in SERVE} - shared_flags
    return flags | {SERVE[name].env(ENV_PREFIX) for name in SERVE}


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for before, statement in zip([None, *body], body, strict=False):
            documents = before is None or isinstance(before, ast.Assign | ast.AnnAssign)
            if documents and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                found.add(id(statement.value))
    return found


def message_literals(tree: ast.AST) -> Iterator[ast.Constant]:
    """String constants used to build or read a mapping."""
    for node in ast.walk(tree):
        candidates: list[ast.expr | None] = []
        if isinstance(node, ast.Dict):
            candidates = list(node.keys)
        elif isinstance(node, ast.Subscript):
            candidates = [node.slice]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault"):
                candidates = [node.args[0]]
            elif (
                isinstance(func, ast.Name)
                and func.id in ("getattr", "setattr", "hasattr")
                and len(node.args) > 1
            ):
                candidates = [node.args[1]]
        elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            candidates = [node.left]
        for candidate in candidates:
            if isinstance(candidate, ast.Constant) and isinstance(candidate.value, str):
                yield candidate


def spelled(source: str, path: str) -> list[str]:
    """``path:line key (contract)`` for every wire key ``source`` spells."""
    tree = ast.parse(source, path)
    contracts = {contract: found - SHARED for contract, found in wire_keys().items()}
    launch, skipped = launch_words(), docstrings(tree)
    found = []
    for literal in message_literals(tree):
        for contract, names in contracts.items():
            if literal.value in names:
                found.append(f"{path}:{literal.lineno} {literal.value!r} ({contract})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in launch and id(node) not in skipped:
            found.append(f"{path}:{node.lineno} {node.value!r} (launch spec)")
    return found


def project_modules() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = set(path.relative_to(ROOT).parts)
        if not parts & SKIPPED and not any(part.startswith(".") for part in parts):
            yield path


def test_no_module_outside_the_contracts_spells_a_contract_s_wire_keys() -> None:
    found = [
        hit for path in project_modules() for hit in spelled(path.read_text(), str(path.relative_to(ROOT)))
    ]

    assert found == []


def test_pages_and_scripts_take_the_batching_options_from_the_table() -> None:
    option = re.compile(r"\b(" + "|".join(map(re.escape, set(BATCHING) - SHARED)) + r")\b")
    pages = [*ROOT.glob("templates/**/*.html"), *ROOT.glob("static/kiln/*.js")]

    found = [
        f"{path.relative_to(ROOT)}: {match.group(1)}"
        for path in pages
        for match in option.finditer(path.read_text())
    ]

    assert pages
    assert found == []


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ('report = {"latency_histogram": histogram}', "latency_histogram"),
        ('payload["window"].get("in_flight")', "in_flight"),
        ('if "generated_at" in table: pass', "generated_at"),
        ('stats["argmax_equal"] += 1', "argmax_equal"),
        ('getattr(series, "max_abs_diff_sum")', "max_abs_diff_sum"),
        ('options = {"max_batch_size": 8}', "max_batch_size"),
        ('argv = ["serve", "--max-queue-delay-ms", "2"]', "--max-queue-delay-ms"),
        ('env = {"KILN_WORKER_REPORT_TOKEN": token}', "KILN_WORKER_REPORT_TOKEN"),
    ],
)
def test_the_scan_finds_a_spelled_key(source: str, key: str) -> None:
    hits = spelled(source, "example.py")

    assert any(repr(key) in hit for hit in hits), hits


def test_the_scan_leaves_attributes_docstrings_and_other_words_alone() -> None:
    source = '"""Reports carry a "latency_histogram"."""\nrow.latency_histogram = report.window.in_flight\n'

    assert spelled(source + 'answer = {"name": model, "replicas": 2}\n', "example.py") == []


def test_every_shared_name_is_a_wire_key_some_contract_uses() -> None:
    used = set().union(*wire_keys().values())

    assert SHARED - used == set()
