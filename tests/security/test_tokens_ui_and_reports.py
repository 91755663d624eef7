"""Tokens created in the UI are shown once and revocable; hostile worker reports are refused."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts.models import ApiToken
from deployments.models import Deployment, Variant, Worker
from deployments.services.workers import new_worker_token
from tests.support.versions import ready_version

pytestmark = pytest.mark.django_db


def test_a_token_made_in_the_ui_is_shown_once_stored_as_a_digest_and_revocable(
    owner: User, outsider: User, web_as: Callable[[User], Client]
) -> None:
    web = web_as(owner)
    page = web.get("/account/tokens/").content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert csrf

    created = web.post(
        "/account/tokens/", {"name": "ci", "csrfmiddlewaretoken": csrf.group(1)}
    ).content.decode()

    token = re.search(r"data-new-token>(kiln_[^<]+)<", created)
    assert token
    row = ApiToken.objects.get(user=owner)
    assert row.digest == hashlib.sha256(token.group(1).encode()).hexdigest()
    assert token.group(1) not in web.get("/account/tokens/").content.decode()
    other = web_as(outsider)
    other_csrf = re.search(
        r'name="csrfmiddlewaretoken" value="([^"]+)"', other.get("/account/tokens/").content.decode()
    )
    assert other_csrf
    other.post(f"/account/tokens/{row.prefix}/revoke/", {"csrfmiddlewaretoken": other_csrf.group(1)})
    assert not ApiToken.objects.get(pk=row.pk).revoked  # someone else's token is untouched
    web.post(f"/account/tokens/{row.prefix}/revoke/", {"csrfmiddlewaretoken": csrf.group(1)})
    assert ApiToken.objects.get(pk=row.pk).revoked


@pytest.fixture
def worker_with_token(owner: User) -> tuple[Worker, str]:
    version = ready_version(owner)
    deployment = Deployment.objects.create(name="d", model=version.model, created_by=owner)
    variant = Variant.objects.create(deployment=deployment, name="a", version=version, pinned_version=version)
    token, digest = new_worker_token()
    worker = Worker.objects.create(variant=variant, version=version, backend="process", token_digest=digest)
    return worker, token


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "must be a JSON object"),
        ('{"schema": "other"}', 400, "schema"),
        ('{"schema": "kiln.worker-report/v1"}', 400, "interval: must be an object"),
        (
            json.dumps({"schema": "kiln.worker-report/v1", "interval": {"start": "x"}, "window": {}}),
            400,
            "interval.start",
        ),
        ("[" * 100_000 + "]" * 100_000, 413, "report larger than"),
    ],
)
def test_hostile_reports_get_a_clear_4xx_and_store_nothing(
    client: Client, worker_with_token: tuple[Worker, str], body: str, status: int, message: str
) -> None:
    worker, token = worker_with_token

    response = client.post(
        f"/api/v1/workers/{worker.pk}/reports/",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )

    assert response.status_code == status
    assert message in json.loads(response.content)["message"]
    assert not worker.reports.exists()


def test_a_report_for_an_unknown_worker_is_refused_like_a_bad_token(client: Client) -> None:
    response = client.post(
        "/api/v1/workers/999999/reports/",
        "{}",
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer x",
    )

    assert response.status_code == 401


@pytest.fixture
def task_with_token(owner: User) -> tuple[Worker, str]:
    """A swarm task's row: its handle is the task id, its digest the service's report token's."""
    version = ready_version(owner)
    deployment = Deployment.objects.create(name="s", model=version.model, created_by=owner)
    variant = Variant.objects.create(deployment=deployment, name="a", version=version, pinned_version=version)
    token, digest = new_worker_token()
    worker = Worker.objects.create(
        variant=variant, version=version, backend="swarm", handle="p3x9task0001", token_digest=digest
    )
    return worker, token


@pytest.mark.parametrize(
    ("path", "header", "status"),
    [
        ("/api/v1/tasks/p3x9task0001/reports/", "", 401),  # no token
        ("/api/v1/tasks/p3x9task0001/reports/", "Bearer wrong", 401),  # another service's token
        ("/api/v1/tasks/unknowntask/reports/", "TOKEN", 401),  # a task the platform has not seen
        ("/api/v1/tasks/../workers/1/reports/", "TOKEN", 404),  # not a task id
        ("/api/v1/tasks/P3X9TASK0001/reports/", "TOKEN", 404),  # task ids are lowercase
    ],
)
def test_a_task_report_without_its_services_token_or_for_another_task_is_refused(
    client: Client, task_with_token: tuple[Worker, str], path: str, header: str, status: int
) -> None:
    worker, token = task_with_token
    headers = {"Authorization": header.replace("TOKEN", f"Bearer {token}")} if header else {}

    response = client.post(path, "{}", content_type="application/json", headers=headers)

    assert response.status_code == status
    assert not worker.reports.exists()


@pytest.mark.parametrize(
    ("listen", "field"),
    [
        ({"http_port": 41000, "grpc_port": "x"}, "listen.grpc_port"),
        ({"http_port": 0}, "listen.http_port"),
        ({"http_port": 70000}, "listen.http_port"),
        ("127.0.0.1:41000", "listen"),
    ],
)
def test_a_report_that_says_it_listens_anywhere_but_on_a_port_number_is_refused(
    client: Client, task_with_token: tuple[Worker, str], listen: object, field: str
) -> None:
    worker, token = task_with_token
    body = {
        "schema": "kiln.worker-report/v1",
        "listen": listen,
        "interval": {"start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:00:01Z"},
        "window": {"requests": 0},
    }

    response = client.post(
        f"/api/v1/tasks/{worker.handle}/reports/",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )

    assert response.status_code == 400
    assert field in json.loads(response.content)["message"]
    worker.refresh_from_db()
    assert worker.last_report == {}
    assert not worker.reports.exists()
