"""Every registry list costs one page: constant queries at 3 and 30 rows, filters, keyset pages."""

from __future__ import annotations

import base64
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from registry.models import AuditEvent, RegisteredModel
from tests.support.catalog import seed_catalog
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def _queries(call: Callable[[], Any]) -> int:
    """Queries of the second of two calls (the first may refresh a token's last use, a session)."""
    call()
    with CaptureQueriesContext(connection) as captured:
        response = call()
    assert response.status_code == 200, response.content[:300]
    return len(captured)


def _same_queries_at_3_and_30(owner: User, fetch: Callable[[], Any], *, prefix: str = "model") -> int:
    seed_catalog(owner=owner, models=3, prefix=prefix)
    at_3 = _queries(fetch)
    seed_catalog(owner=owner, models=27, prefix=f"{prefix}-more")
    at_30 = _queries(fetch)
    assert at_3 == at_30, f"{at_3} queries at 3 rows, {at_30} at 30"
    return at_30


def test_the_web_model_list_runs_the_same_queries_for_3_and_30_models(
    owner: User, web_as: Callable[[User], Client]
) -> None:
    web = web_as(owner)
    assert _same_queries_at_3_and_30(owner, lambda: web.get("/")) <= 8


def test_the_api_model_list_runs_the_same_queries_for_3_and_30_models(
    owner: User, owner_api: APIClient
) -> None:
    assert _same_queries_at_3_and_30(owner, lambda: owner_api.get("/api/v1/models/?page_size=100")) <= 6


def test_the_api_version_list_runs_the_same_queries_for_3_and_30_versions(
    owner: User, owner_api: APIClient
) -> None:
    seed_catalog(owner=owner, models=1, versions_per_model=3, prefix="few")
    seed_catalog(owner=owner, models=1, versions_per_model=30, prefix="many")
    counts = {
        name: _queries(partial(owner_api.get, f"/api/v1/models/{name}/versions/?page_size=100"))
        for name in ("few-00000", "many-00000")
    }
    cursor_counts = {
        name: _queries(partial(owner_api.get, f"/api/v1/models/{name}/versions/?cursor="))
        for name in ("few-00000", "many-00000")
    }
    assert counts["few-00000"] == counts["many-00000"] <= 6
    assert cursor_counts["few-00000"] == cursor_counts["many-00000"] <= 6


def test_the_api_audit_list_runs_the_same_queries_for_3_and_30_events(
    owner: User, owner_api: APIClient
) -> None:
    seed_catalog(owner=owner, models=1, events_per_model=3, prefix="quiet")
    seed_catalog(owner=owner, models=1, events_per_model=30, prefix="busy")
    counts = [
        _queries(partial(owner_api.get, f"/api/v1/audit-events/?model={name}&{mode}"))
        for mode in ("page_size=100", "cursor=")
        for name in ("quiet-00000", "busy-00000")
    ]
    assert counts[0] == counts[1], counts
    assert counts[2] == counts[3], counts


@pytest.mark.parametrize(
    "path",
    [
        "/admin/registry/registeredmodel/",
        "/admin/registry/modelversion/",
        "/admin/registry/alias/",
        "/admin/registry/auditevent/",
    ],
)
def test_an_admin_list_runs_the_same_queries_for_3_and_30_models(staff: User, path: str) -> None:
    web = Client()
    web.force_login(staff)
    _same_queries_at_3_and_30(staff, lambda: web.get(path), prefix="admin")


def test_models_are_found_by_name_tag_owner_team_and_latest_state(
    owner: User, outsider: User, team: Group, owner_api: APIClient
) -> None:
    seed_catalog(owner=owner, models=8, team=team, prefix="vision")
    seed_catalog(owner=outsider, models=2, prefix="other")

    def names(query: str) -> list[str]:
        response = owner_api.get(f"/api/v1/models/?{query}")
        assert response.status_code == 200, response.json()
        return [m["name"] for m in response.json()["results"]]

    assert names("search=other") == ["other-00000", "other-00001"]
    assert names("search=VISION-0000") == [f"vision-{i:05d}" for i in range(8)]
    assert names("tag=nlp") == ["other-00001", "vision-00001", "vision-00006"]
    assert names("owner=oscar") == ["other-00000", "other-00001"]
    assert names("team=ml-team") == ["vision-00000", "vision-00002", "vision-00004", "vision-00006"]
    assert names("state=failed") == ["vision-00002", "vision-00006"]
    assert names("state=failed&team=ml-team&tag=tabular") == ["vision-00002"]
    assert names("owner=nobody") == []


def test_a_bad_filter_is_a_400_naming_the_parameter(owner_api: APIClient) -> None:
    response = owner_api.get("/api/v1/models/?state=melted")
    assert response.status_code == 400
    assert response.json()["message"].startswith("state: one of registered")
    assert owner_api.get(f"/api/v1/models/?search={'x' * 201}").status_code == 400


def test_versions_are_found_by_state_alias_and_metadata_key(owner: User, owner_api: APIClient) -> None:
    seed_catalog(owner=owner, models=3, versions_per_model=5, prefix="m")
    url = "/api/v1/models/m-00002/versions/"

    def numbers(query: str) -> list[int]:
        response = owner_api.get(f"{url}?{query}")
        assert response.status_code == 200, response.json()
        return [v["version"] for v in response.json()["results"]]

    assert numbers("") == [5, 4, 3, 2, 1]
    assert numbers("state=failed") == [5]
    assert numbers("status=ready") == [4, 3, 2, 1]
    assert numbers("alias=production") == [5]
    assert numbers("alias=staging") == []
    assert numbers("metadata_key=dataset") == [5]
    assert numbers("metadata_key=git_commit&state=ready") == [4, 3, 2, 1]
    assert owner_api.get(f"{url}?state=gone").status_code == 400
    assert owner_api.get("/api/v1/models/nope/versions/?cursor=").status_code == 404


def test_a_cursor_walks_every_version_once_newest_first(owner: User, owner_api: APIClient) -> None:
    seed_catalog(owner=owner, models=1, versions_per_model=12, prefix="long")
    seen: list[int] = []
    url: str | None = "/api/v1/models/long-00000/versions/?cursor=&page_size=5"
    pages = 0
    while url:
        body = owner_api.get(url).json()
        assert body["count"] is None
        seen += [v["version"] for v in body["results"]]
        url = body["next"]
        pages += 1
    assert seen == list(range(12, 0, -1))
    assert pages == 3


@pytest.mark.parametrize("position", ["p=abc", "p=1e5", "r=1&p=x", "o=-1&p=1", None])
def test_a_cursor_the_list_did_not_give_is_a_400_naming_the_cursor(
    owner: User, owner_api: APIClient, position: str | None
) -> None:
    """A hand-made cursor (base64 of a position the ordering field cannot hold) was a 500 on the
    versions list; one that is no cursor at all was DRF's 404."""
    seed_catalog(owner=owner, models=1, versions_per_model=2, events_per_model=2, prefix="c")
    cursor = "garbage" if position is None else base64.b64encode(position.encode()).decode()
    for path in ("/api/v1/models/c-00000/versions/", "/api/v1/audit-events/"):
        answer = owner_api.get(path, {"cursor": cursor})
        assert answer.status_code == 400, (path, answer.content)
        assert answer.json()["message"] == "cursor: not a cursor this list gave (follow next)"


def test_page_numbers_still_work_and_count_the_matches(owner: User, owner_api: APIClient) -> None:
    seed_catalog(owner=owner, models=7, prefix="p")
    body = owner_api.get("/api/v1/models/?page=2&page_size=3").json()
    assert body["count"] == 7
    assert [m["name"] for m in body["results"]] == ["p-00003", "p-00004", "p-00005"]
    assert [m["version_count"] for m in body["results"]] == [4, 4, 4]
    assert owner_api.get("/api/v1/models/?page=9&page_size=3").status_code == 404
    last = owner_api.get("/api/v1/models/?page=last&page_size=3").json()
    assert [m["name"] for m in last["results"]] == ["p-00006"]
    assert len(owner_api.get("/api/v1/models/?page_size=500").json()["results"]) == 7


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("page_size=abc", "page_size"),
        ("page_size=-5", "page_size"),
        ("page_size=0", "page_size"),
        ("page_size=501", "page_size"),  # was clamped to 500: a client counting pages by its size miscounts
        ("page_size=%EF%BC%95", "page_size"),  # a full-width digit
        ("page=abc", "page"),  # was a 404 "Invalid page."
        ("page=0", "page"),
        ("cursor=&page_size=x", "page_size"),
    ],
)
def test_a_page_or_page_size_that_is_no_whole_number_in_bounds_is_a_400(
    owner: User, owner_api: APIClient, query: str, parameter: str
) -> None:
    seed_catalog(owner=owner, models=2, prefix="q")
    for path in ("/api/v1/models/", "/api/v1/models/q-00000/versions/", "/api/v1/audit-events/"):
        answer = owner_api.get(f"{path}?{query}")
        assert answer.status_code == 400, (path, query, answer.content)
        assert answer.json()["message"].startswith(f"{parameter}: "), answer.json()


def test_a_cursor_walks_the_audit_trail_of_one_model(owner: User, owner_api: APIClient) -> None:
    seed_catalog(owner=owner, models=2, events_per_model=7, prefix="a")
    ids: list[int] = []
    url: str | None = "/api/v1/audit-events/?model=a-00001&cursor=&page_size=3"
    while url:
        body = owner_api.get(url).json()
        ids += [e["id"] for e in body["results"]]
        url = body["next"]
    expected = AuditEvent.objects.filter(model__name="a-00001").order_by("-created_at", "-id")
    assert sorted(ids) == sorted(expected.values_list("id", flat=True))
    assert len(ids) == len(set(ids)) == 7


def test_the_web_list_pages_searches_and_counts(owner: User, web_as: Callable[[User], Client]) -> None:
    seed_catalog(owner=owner, models=120, prefix="w")
    web = web_as(owner)

    first = web.get("/").content.decode()
    assert "120 models · page 1 of 3" in first
    assert 'name="search"' in first
    assert "w-00049" in first
    assert "w-00050" not in first
    assert 'href="?page=2"' in first

    found = web.get("/?search=w-0011&state=ready").content.decode()
    assert "found · page 1 of 1" in found
    assert [n for n in ("w-00110", "w-00111", "w-00112", "w-00113") if f">{n}<" in found] == [
        "w-00112",
        "w-00113",
    ]
    audio = web.get("/?tag=audio&page=2").content.decode()  # past the last page: the last page
    assert "24 models found · page 1 of 1" in audio
    assert audio.count('class="chip muted">audio<') == 24
    assert "No model matches" in web.get("/?owner=nobody").content.decode()
    assert "state: one of" in web.get("/?state=melted").content.decode()
    assert RegisteredModel.objects.count() == 120


def test_after_the_newest_version_is_deleted_the_model_is_listed_and_filtered_by_the_one_before(
    owner: User, owner_api: APIClient
) -> None:
    """``latest_version`` counted the numbers handed out: with v2 deleted, the list showed v2 and no
    ``?state=`` matched the model any more."""
    ready_version(owner, model="kept", number=1, status="registered")
    ready_version(owner, model="kept", number=2, status="failed")
    assert owner_api.delete("/api/v1/models/kept/versions/2/").status_code == 204

    model = owner_api.get("/api/v1/models/kept/").json()
    assert (model["latest_version"], model["version_count"]) == (1, 1)

    def matching(state: str) -> list[str]:
        return [m["name"] for m in owner_api.get("/api/v1/models/", {"state": state}).json()["results"]]

    assert matching("registered") == ["kept"]
    assert matching("failed") == []
    ready_version(owner, model="kept", number=3, status="ready")  # numbers are never reused
    assert owner_api.get("/api/v1/models/kept/").json()["latest_version"] == 3
    assert matching("ready") == ["kept"]
