"""Token creation and verification. Pure helpers plus two small services."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from accounts.models import ApiToken

TOKEN_PREFIX = "kiln_"  # noqa: S105 - a public marker, not a secret


def digest_token(token: str) -> str:
    """SHA-256 of a token. Tokens carry 190+ bits of entropy, so no slow hash is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """Return (prefix, secret) of a well-formed token, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    parts = token[len(TOKEN_PREFIX) :].split("_", 1)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


def create_api_token(*, user: User, name: str = "", ttl_days: int | None = None) -> str:
    """Create a token for ``user`` and return it in clear; it cannot be recovered later."""
    prefix = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    expires_at = timezone.now() + timedelta(days=ttl_days) if ttl_days else None
    ApiToken.objects.create(
        user=user, name=name, prefix=prefix, digest=digest_token(token), expires_at=expires_at
    )
    return token


def find_api_token(token: str) -> ApiToken | None:
    """The live token row matching ``token``, compared in constant time; None otherwise."""
    parts = split_token(token)
    if parts is None:
        return None
    row = ApiToken.objects.select_related("user").filter(prefix=parts[0], revoked=False).first()
    if row is None or not hmac.compare_digest(row.digest, digest_token(token)):
        return None
    if row.expires_at is not None and row.expires_at <= timezone.now():
        return None
    return row
