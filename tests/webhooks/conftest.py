from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def receiver(settings: Any) -> Iterator[WebhookReceiver]:
    """A local receiver, allowed as a target (loopback is refused unless the allow-list names it)."""
    settings.KILN_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    server = WebhookReceiver().start()
    yield server
    server.stop()
