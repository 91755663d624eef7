"""Metric names in PromQL (dashboards, alert rules) and in a Prometheus text exposition.

No PromQL parser is at hand in Python; promtool checks the syntax, and this
reads the names with the few rules PromQL's grammar allows: after removing
strings, label matchers, ranges and grouping clauses, every identifier that is
not a keyword, not a function or aggregation (followed by ``(``) and not part
of a number or duration is a metric name.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan", "start", "end"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by values PromQL accepts (a duration; inside strings, any text)."""
    return _GRAFANA_VARIABLE.sub(
        lambda m: "5m" if "interval" in m.group(0) or "range" in m.group(0) else "x", expr
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRING.sub('""', grafana_to_promql(expr))
    previous = None
    while previous != text:  # nested braces cannot occur, but matchers may follow one another
        previous, text = text, _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isalnum() or before in "._":
            continue  # the exponent of 1e-3, the unit of 5m, ...
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() in KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def exposed_series_names(exposition: str) -> set[str]:
    """Every series name a scrape of this text makes queryable, including families without samples yet.

    A counter family ``x`` yields ``x_total``; a histogram ``x`` yields ``x_bucket``,
    ``x_sum`` and ``x_count`` (never ``x`` itself, which no query can select).
    """
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
