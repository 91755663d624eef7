"""The dashboard in a real browser while load runs: charts draw data and refresh live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.support.browser import log_in
from tests.support.e2e import Load, wait_ready, wait_routed
from tests.support.polling import wait_for
from tests.support.services import Platform
from tests.support.versions import stored_version

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.browser]


def test_staff_see_live_charts_that_refresh_while_load_runs(
    platform: Platform,
    owner: User,
    staff: User,
    owner_api: APIClient,
    tmp_path: Path,
    browser_page: tuple[Any, Any],
) -> None:
    page, shot = browser_page
    stored_version(owner, tmp_path)
    owner_api.post(
        "/api/v1/deployments/", {"name": "cnn", "model": "cnn", "variants": [{"version": 1}]}, format="json"
    )
    wait_ready(owner_api, "cnn", {"primary": 1})
    wait_routed(platform.gateway.url, "cnn")

    with Load(f"{platform.gateway.url}/v2/models/cnn/infer", clients=2, rate=30) as load:
        wait_for(lambda: load.ok > 60, timeout=30)
        log_in(page, platform.url, "admin", "pw-admin-123")
        page.get_by_role("link", name="Dashboard").click()
        page.wait_for_selector("#overview-table tbody tr[data-name='cnn']")
        wait_for(
            lambda: float(page.inner_text("tr[data-name='cnn'] [data-metric='requests_per_s']") or 0) > 0,
            timeout=30,
            interval=1,
            message="a non-zero rate on the overview",
        )
        shot("overview under load")

        page.get_by_role("link", name="cnn").first.click()
        page.wait_for_selector("[data-series][data-loaded]")
        chart = page.locator("[data-chart='requests_per_s']")
        wait_for(
            lambda: int(chart.get_attribute("data-points") or 0) > 0,
            timeout=30,
            interval=1,
            message="the requests chart to draw points",
        )
        assert page.locator("[data-chart='requests_per_s'] canvas").count() == 1
        assert page.locator("[data-chart='latency'] canvas").count() == 1
        first_load = page.get_attribute("[data-series]", "data-loaded")
        first_points = int(chart.get_attribute("data-points") or 0)
        shot("deployment charts")
        wait_for(
            lambda: (
                page.get_attribute("[data-series]", "data-loaded") != first_load
                and int(chart.get_attribute("data-points") or 0) > first_points
            ),
            timeout=40,
            interval=1,
            message="the charts to refresh with new points",
        )
        shot("deployment charts refreshed")
        page.get_by_role("button", name="1h").click()
        page.wait_for_selector("[data-range='1h'][aria-pressed='true']")
        shot("one hour range")
