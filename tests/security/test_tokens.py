"""API tokens are shown once and stored only as digests."""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import ApiToken

pytestmark = pytest.mark.django_db


def test_create_api_token_prints_a_token_that_is_stored_only_as_a_digest(owner: User) -> None:
    out = StringIO()

    call_command("create_api_token", "olivia", stdout=out)

    token = out.getvalue().strip()
    row = ApiToken.objects.get()
    assert token.startswith(f"kiln_{row.prefix}_")
    assert row.digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(list(ApiToken.objects.values_list()))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/models/").status_code == 200


def test_create_api_token_for_an_unknown_user_fails_clearly() -> None:
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("create_api_token", "ghost")


def test_revoked_tokens_and_tokens_of_inactive_users_are_refused(owner: User) -> None:
    out = StringIO()
    call_command("create_api_token", "olivia", stdout=out)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {out.getvalue().strip()}")

    ApiToken.objects.update(revoked=True)
    revoked = client.get("/api/v1/models/")
    ApiToken.objects.update(revoked=False)
    User.objects.filter(pk=owner.pk).update(is_active=False)
    inactive = client.get("/api/v1/models/")

    assert revoked.status_code == 401
    assert inactive.status_code == 401


def test_a_token_with_the_right_prefix_and_a_wrong_secret_is_refused(owner: User) -> None:
    out = StringIO()
    call_command("create_api_token", "olivia", stdout=out)
    token = out.getvalue().strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token[:-4]}AAAA")

    assert client.get("/api/v1/models/").status_code == 401
