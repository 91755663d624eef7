"""DRF authentication with hashed bearer tokens: ``Authorization: Bearer kiln_…`` (or ``Token``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ApiToken
from accounts.tokens import find_api_token


class HashedTokenAuthentication(authentication.BaseAuthentication):
    """Look the token up by prefix and compare digests; record the last use once a minute."""

    keywords = ("bearer", "token")

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'")
        row = find_api_token(parts[1])
        if row is None or not row.user.is_active:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API token")
        now = timezone.now()
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        return row.user, row

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
