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

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.timeout(900),  # two conversions, two deployments and a browser: 3-6 minutes here
]


def upload_version(page: Any, base: str, path: Path, signature: dict[str, Any]) -> None:
    page.goto(f"{base}/models/digits/upload/")
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_label("Signature").fill(json.dumps(signature))
    page.get_by_label("Git commit").fill("c0ffee")
    page.get_by_role("button", name="Upload").click()
    # The upload is inspected in a sandboxed child before the page moves on: slow on a loaded machine.
    page.wait_for_url(re.compile(r".*/models/digits/versions/\d+/$"), timeout=120_000)


def wait_status(page: Any, selector: str, status: str, timeout: float = 240) -> None:
    """The page refreshes itself; wait until it shows ``status``."""
    page.wait_for_selector(f"{selector} [data-status='{status}']", timeout=timeout * 1000)


def wider_than_the_screen(page: Any) -> list[str]:
    """Why the page scrolls sideways, if it does: the elements that stick out of the viewport (a table
    scrolls inside its own wrapper, so its cells are not listed; the page itself must not scroll)."""
    return list(
        page.evaluate(
            """() => document.documentElement.scrollWidth <= window.innerWidth + 2 ? [] :
            ['page ' + document.documentElement.scrollWidth + ' px wide'].concat(
            [...document.querySelectorAll('body *')]
              .filter(e => e.getBoundingClientRect().right > window.innerWidth + 2)
              .filter(e => !e.closest('table'))
              .slice(0, 5)
              .map(e => e.tagName + '.' + e.className + ' ' + (e.textContent || '').slice(0, 40)))"""
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
    example = page.locator("[data-curl-example]").text_content() or ""
    assert '"datatype": "FP32", "shape": [1, 3, 16, 16]' in example, example
    shot("deployment serving")
    page.goto(f"{base}/deployments/")
    assert "primary: 1 of 1 ready" in page.locator("main").inner_text()
    shot("deployments list")

    upload_version(page, base, v2, signature)
    wait_status(page, ".card", "ready")
    shot("version 2 ready")

    page.goto(f"{base}/deployments/digits/")
    assert page.locator("#add-name").input_value() == "candidate"
    page.locator("#add-version").fill("2")
    page.get_by_role("button", name="Add at 0%").click()
    wait_for(
        lambda: page.locator("tr[data-state='ready']").count() == 2,
        timeout=120,
        interval=2,
        message="the candidate's replica (the worker table refreshes itself)",
    )
    assert page.locator("#add-name").input_value() == "candidate-2"  # a name no variant has
    page.get_by_role("button", name="90/10").click()
    page.wait_for_selector("text=Traffic split applied.")
    assert page.locator("#weight-candidate").input_value() == "10"
    assert page.locator("[data-split-total]").inner_text() == "Total 100%"
    page.locator("#weight-candidate").fill("20")
    assert page.locator("[data-split-total]").inner_text() == "Total 110% (must be 100%)"
    page.locator("#weight-candidate").fill("10")
    # The Status section stays what it was after the live region refreshes (no forms appear in it).
    status_before = page.locator("section[aria-labelledby='status-h']").inner_html()
    page.evaluate(
        "document.addEventListener('kiln:refreshed', () => {"
        " window.__kilnRefreshed = (window.__kilnRefreshed || 0) + 1; })"
    )
    wait_for(
        lambda: page.evaluate("window.__kilnRefreshed || 0") > 0,
        timeout=20,
        interval=0.5,
        message="the live region to refresh",
    )
    assert page.locator("section[aria-labelledby='status-h'] form").count() == 0
    assert page.locator("section[aria-labelledby='status-h']").inner_html() == status_before
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
            timeout=120,  # reports every second, gateway stats every few: slower on a loaded machine
            interval=1,
            message="both variants with live numbers",
        )
        legend = page.locator("[data-chart='requests_per_s'] .u-legend").inner_text()
        assert "primary" in legend
        assert "candidate" in legend
        assert re.fullmatch(
            r"updated \d\d:\d\d:\d\d · data (at|from) .*", page.locator("[data-updated]").inner_text()
        ), page.locator("[data-updated]").inner_text()
        assert (
            page.locator("[data-chart='gpu_utilization_percent']").inner_text() == "No GPU on these workers."
        )
        shot("dashboard with both variants")
        # A deployment minutes old fills one bucket of seven days: drawn as points, with the range it covers.
        page.get_by_role("button", name="7d").click()
        page.wait_for_selector("[data-range='7d'][aria-pressed='true']")
        wait_for(
            lambda: int(chart.get_attribute("data-points") or 0) > 0,
            timeout=30,
            interval=1,
            message="the 7-day chart to have points",
        )
        assert "· data " in page.locator("[data-updated]").inner_text()
        # the time axis on the pages' 24-hour clock, dated (uPlot's default reads "9pm")
        labels = (chart.get_attribute("data-x-labels") or "").split("|")
        assert labels
        assert all(re.fullmatch(r"\d\d-\d\d|\d\d:\d\d(\n\d\d-\d\d)?", label) for label in labels), labels
        assert "\n" in labels[0] or re.fullmatch(r"\d\d-\d\d", labels[0]), labels
        shot("dashboard seven days")

    page.goto(f"{base}/deployments/digits/")
    dialogs: list[str] = []

    def answer(dialog: Any) -> None:
        dialogs.append(dialog.message)
        if len(dialogs) == 1:
            dialog.dismiss()
        else:
            dialog.accept()

    page.on("dialog", answer)
    page.get_by_role("button", name="Promote candidate").click()  # asks first; dismissed: nothing happens
    assert page.locator("#weight-candidate").input_value() == "10"
    page.get_by_role("button", name="Promote candidate").click()
    page.wait_for_selector("text=candidate promoted")
    assert dialogs[0].startswith("Promote candidate? The stable variant takes v2")

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
    assert "{'" not in trail
    assert "None" not in trail
    shot("audit trail")
    page.goto(f"{base}/models/digits/versions/1/")
    assert page.locator("table.profile thead").inner_text().split()[-2:] == ["Latency", "(relative)"]

    # Phone width: the pages stay usable (no sideways scrolling of the page itself), one shot each.
    page.set_viewport_size({"width": 390, "height": 844})
    for url in (
        "/",
        "/models/digits/",
        "/models/digits/versions/2/",
        "/deployments/",
        "/deployments/digits/",
        "/dashboard/",
        "/dashboard/deployments/digits/",
        "/audit/",
    ):
        page.goto(f"{base}{url}")
        assert wider_than_the_screen(page) == [], url
        shot(f"phone {url}")
