"""The user's whole journey in a real browser, one screenshot per step."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Variant
from registry.models import AuditEvent
from tests.support.browser import log_in
from tests.support.e2e import Load
from tests.support.polling import wait_for
from tests.support.services import Platform
from tests.support.torch_models import save_torchscript_cnn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.browser]


def upload_version(page: Any, base: str, path: Path, signature: dict[str, Any]) -> None:
    page.goto(f"{base}/models/digits/upload/")
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_label("Signature").fill(json.dumps(signature))
    page.get_by_label("Git commit").fill("c0ffee")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r".*/models/digits/versions/\d+/$"))


def wait_status(page: Any, selector: str, status: str, timeout: float = 240) -> None:
    """The page refreshes itself; wait until it shows ``status``."""
    page.wait_for_selector(f"{selector} [data-status='{status}']", timeout=timeout * 1000)


def wider_than_the_screen(page: Any) -> list[str]:
    """Elements that stick out of the viewport (tables scroll inside their own wrapper, which is fine)."""
    return list(
        page.evaluate(
            """() => document.documentElement.scrollWidth <= window.innerWidth + 2 ? [] :
            [...document.querySelectorAll('body *')]
              .filter(e => e.getBoundingClientRect().right > window.innerWidth + 2)
              .filter(e => !e.closest('.table-wrap'))
              .slice(0, 5)
              .map(e => e.tagName + '.' + e.className + ' ' + (e.textContent || '').slice(0, 40))"""
        )
    )


def test_a_user_goes_from_upload_to_a_promoted_ab_split(
    platform: Platform, staff: User, owner_api: APIClient, tmp_path: Path, browser_page: tuple[Any, Any]
) -> None:
    page, shot = browser_page
    base = platform.url

    # Keyboard first: the skip link is the first stop, the login form works with Tab and Enter.
    page.goto(f"{base}/accounts/login/")
    assert page.evaluate("document.activeElement.id") == "id_username"  # autofocus
    log_in(page, base, "admin", "pw-admin-123")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"
    shot("logged in")

    page.get_by_role("link", name="New model").click()
    page.get_by_label("Name").fill("digits")
    page.get_by_label("Description").fill("a small CNN")
    page.get_by_role("button", name="Create model").click()
    page.wait_for_url(f"{base}/models/digits/upload/")
    shot("model created")

    v1, v2 = tmp_path / "v1.pt", tmp_path / "v2.pt"
    signature = save_torchscript_cnn(v1, seed=1)
    save_torchscript_cnn(v2, seed=2)
    upload_version(page, base, v1, signature)
    shot("version 1 uploaded, converting")
    wait_status(page, ".card", "ready")
    parity = page.locator("#parity-h")
    assert parity.is_visible()
    assert "passed" in page.locator("section[aria-labelledby='parity-h']").inner_text()
    assert page.locator("section[aria-labelledby='profile-h'] table tbody tr").count() >= 3
    shot("version 1 ready with parity report and profile")

    page.get_by_role("link", name="Deploy", exact=True).click()
    assert "Batch" in page.locator("[data-testid='batching-note']").inner_text()
    page.get_by_label("Name").fill("digits")
    shot("deploy form with proposed batching")
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.wait_for_url(f"{base}/deployments/digits/")
    page.wait_for_selector("tr[data-state='ready']", timeout=90_000)
    shot("deployment serving")

    upload_version(page, base, v2, signature)
    wait_status(page, ".card", "ready")
    shot("version 2 ready")

    page.goto(f"{base}/deployments/digits/")
    page.locator("#add-version").fill("2")
    page.get_by_role("button", name="Add at 0%").click()
    wait_for(
        lambda: page.locator("tr[data-state='ready']").count() == 2,
        timeout=120,
        interval=2,
        message="the candidate's replica (the worker table refreshes itself)",
    )
    page.get_by_role("button", name="90/10").click()
    page.wait_for_selector("text=Traffic split applied.")
    assert page.locator("#weight-candidate").input_value() == "10"
    shot("split 90/10")

    with Load(f"{platform.gateway.url}/v2/models/digits/infer", clients=2, rate=30) as load:
        wait_for(lambda: load.variants["candidate"] > 3, timeout=60, message="traffic on the candidate")
        page.get_by_role("link", name="Dashboard").click()
        page.wait_for_selector("tr[data-name='digits']")
        page.goto(f"{base}/dashboard/deployments/digits/")
        chart = page.locator("[data-chart='requests_per_s']")
        wait_for(
            lambda: (
                int(chart.get_attribute("data-points") or 0) > 0
                and page.locator("#gateway-table tbody tr").count() == 2
            ),
            timeout=60,
            interval=1,
            message="both variants with live numbers",
        )
        legend = page.locator("[data-chart='requests_per_s'] .u-legend").inner_text()
        assert "primary" in legend
        assert "candidate" in legend
        shot("dashboard with both variants")

    page.goto(f"{base}/deployments/digits/")
    page.get_by_role("button", name="Promote candidate").click()
    page.wait_for_selector("text=candidate promoted")

    def promoted() -> bool:
        primary = Variant.objects.select_related("version").get(deployment__name="digits", name="primary")
        return primary.version.version == 2 and primary.weight == 100

    wait_for(promoted, timeout=120, interval=1, message="primary serving v2 with the traffic back")
    page.reload()
    assert page.locator("#weight-primary").input_value() == "100"
    assert page.locator("#weight-candidate").input_value() == "0"
    shot("candidate promoted")

    page.get_by_role("link", name="Audit").click()
    trail = page.locator("ul.events").inner_text()
    for action in (
        "model.created",
        "version.registered",
        "deployment.created",
        "variant.added",
        "traffic.manual",
        "rollout.promoted",
        "traffic.promote",
    ):
        assert action in trail, action
    assert AuditEvent.objects.filter(action="version.registered").count() == 2
    shot("audit trail")

    # Phone width: the pages stay usable (no sideways scrolling of the page itself).
    page.set_viewport_size({"width": 390, "height": 844})
    for url in ("/", "/models/digits/", "/deployments/digits/", "/dashboard/"):
        page.goto(f"{base}{url}")
        assert wider_than_the_screen(page) == [], url
    shot("phone width")
