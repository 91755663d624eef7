"""Audit records read as words on the pages: what changed, never a Python repr."""

from __future__ import annotations

from django.template import Context, Template

from registry.templatetags.audit_text import audit_change


def test_a_split_change_shows_each_variant_before_and_after() -> None:
    before = {
        "primary": {"weight": 90, "shadow_percent": 0},
        "candidate": {"weight": 10, "shadow_percent": 0},
    }
    after = {"primary": {"weight": 100, "shadow_percent": 0}, "candidate": {"weight": 0, "shadow_percent": 0}}

    assert audit_change(before, after) == (
        "primary: weight 90, shadow percent 0 → weight 100, shadow percent 0; "
        "candidate: weight 10, shadow percent 0 → weight 0, shadow percent 0"
    )


def test_only_the_keys_that_changed_are_shown() -> None:
    assert audit_change({"version": 1, "alias": "production"}, {"version": 2, "alias": "production"}) == (
        "version: 1 → 2"
    )


def test_none_true_and_empty_values_are_words() -> None:
    text = audit_change(
        None, {"name": "primary", "alias": "", "enabled": True, "gpu_ids": [], "pinned": None}
    )

    assert text == "name primary, alias empty, enabled yes, gpu ids none, pinned none"
    assert audit_change({"status": "serving"}, None) == "was status serving"


def test_the_events_list_renders_without_python_reprs() -> None:
    event = {
        "created_at": None,
        "actor_label": "olivia",
        "action": "traffic.changed",
        "subject": "deployment/fraud",
        "before": {"primary": {"weight": 100}},
        "after": {"primary": {"weight": 90}, "candidate": {"weight": 10}},
        "reason": "",
    }
    html = Template('{% include "registry/_events.html" %}').render(Context({"events": [event]}))

    assert "primary: weight 100 → weight 90; candidate: none → weight 10" in html
    assert "{" not in html.split("<ul", 1)[1]
    assert "None" not in html
