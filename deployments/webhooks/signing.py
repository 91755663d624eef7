"""The ``X-Kiln-Signature`` header: HMAC-SHA256 over ``"<timestamp>.<body>"`` (pure, no ORM).

``t=<unix seconds>,v1=<hex digest>``, as Stripe signs. Receivers recompute the digest with
their copy of the secret, compare in constant time, and refuse a timestamp outside their replay
window (``REPLAY_WINDOW_S``, documented in docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
import hmac

REPLAY_WINDOW_S = 300
"""How old a signed timestamp a receiver should still accept (docs/webhooks.md)."""


def signature(secret: str, timestamp: int, body: str) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: str, *, now: float, window_s: float = REPLAY_WINDOW_S) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` and its timestamp is within the window."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > window_s:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
