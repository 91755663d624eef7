"""The dashboard and its data are for staff only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

PAGES = ["/dashboard/"]
FEEDS = ["/api/v1/dashboard/overview/"]


def test_anonymous_visitors_get_no_dashboard_and_no_data(client: Client, anonymous_api: APIClient) -> None:
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 302
        assert "/login/" in response["Location"]
    for url in FEEDS:
        assert anonymous_api.get(url).status_code == 401


def test_non_staff_users_get_no_dashboard_and_no_data(
    owner: User, web_as: Callable[[User], Client], api_as: Callable[[User], APIClient]
) -> None:
    web, api = web_as(owner), api_as(owner)

    assert web.get("/dashboard/").status_code == 302
    assert "Dashboard" not in web.get("/").content.decode()
    for url in FEEDS:
        response = api.get(url)
        assert response.status_code == 403
        assert "deployments" not in response.json()


def test_staff_see_the_dashboard_linked_from_the_navigation_and_the_admin(
    staff: User, web_as: Callable[[User], Client], api_as: Callable[[User], APIClient]
) -> None:
    web = web_as(staff)

    assert web.get("/dashboard/").status_code == 200
    assert 'href="/dashboard/"' in web.get("/").content.decode()
    assert 'href="/dashboard/"' in web.get("/admin/").content.decode()
    assert api_as(staff).get("/api/v1/dashboard/overview/").json()["deployments"] == []


def test_a_bad_overview_window_is_a_400_naming_it_and_a_huge_one_is_clamped(
    staff: User, api_as: Callable[[User], APIClient]
) -> None:
    api = api_as(staff)

    for bad in ("abc", "-5", "nan"):
        response = api.get(f"/api/v1/dashboard/overview/?window_s={bad}")
        assert response.status_code == 400, bad
        assert "window_s" in str(response.json())
    assert api.get("/api/v1/dashboard/overview/?window_s=999999").json()["window_s"] == 3600
