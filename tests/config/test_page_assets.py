"""Small things a browser asks for: a favicon, and API docs that fetch nothing from another host."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_favicon_is_served_to_anyone() -> None:
    answer = Client().get("/favicon.ico")

    assert answer.status_code == 302
    assert answer["Location"].endswith("/kiln/favicon.svg")


def test_pages_name_their_icon(owner: User, web_as: Callable[[User], Client]) -> None:
    page = web_as(owner).get("/").content.decode()

    assert re.search(r'<link rel="icon" href="[^"]+/kiln/favicon.svg"', page)


@pytest.mark.parametrize("url", ["/api/redoc/", "/api/docs/"])
def test_the_api_docs_load_nothing_from_another_host(
    url: str, owner: User, web_as: Callable[[User], Client]
) -> None:
    answer = web_as(owner).get(url)
    page = answer.content.decode()

    assert answer.status_code == 200
    assert re.findall(r'(?:src|href)="(?:https?:)?//[^"]*"', page) == []
