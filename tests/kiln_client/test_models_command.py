"""`kiln models`: one page of the model list at a time, with the web list's filters."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from accounts.tokens import create_api_token
from tests.kiln_client.test_cli import kiln
from tests.support.catalog import seed_catalog

pytestmark = pytest.mark.django_db(transaction=True)


def test_kiln_models_prints_one_page_and_says_how_many_there_are(live_server: Any, owner: User) -> None:
    seed_catalog(owner=owner, models=12, prefix="fraud")
    token = create_api_token(user=owner)

    second = kiln("models", "--page", "2", "--page-size", "5", url=live_server.url, token=token)
    failed = kiln("models", "--state", "failed", "--tag", "tabular", url=live_server.url, token=token)
    wrong = kiln("models", "--page", "9", url=live_server.url, token=token)

    assert second.returncode == 0, second.stderr
    assert [line.split()[0] for line in second.stdout.splitlines()] == [
        f"fraud-{i:05d}" for i in range(5, 10)
    ]
    assert second.stdout.splitlines()[0].split()[1:4] == ["v4", "production=v4", "olivia"]
    assert second.stderr.strip() == "page 2 of 3 (12 models)"
    assert failed.stdout.split()[:1] == ["fraud-00002"]
    assert failed.stderr.strip() == "page 1 of 1 (1 model)"
    assert (wrong.returncode, wrong.stderr.strip()) == (1, "kiln: Invalid page.")
