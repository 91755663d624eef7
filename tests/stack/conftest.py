"""The live scrapes of every component, once per session (helpers in tests/support/stack.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.test import Client

from tests.support.promql import exposed_series_names
from tests.support.stack import LiveExports, gateway_available, infer, scrape_gateway, start_worker


@pytest.fixture(scope="session")
def live_exports(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveExports]:
    tmp = tmp_path_factory.mktemp("stack")
    exports = LiveExports()
    with django_db_blocker.unblock():
        response = Client().get("/metrics")
    text = response.content.decode()
    assert response.status_code == 200
    for source in ("database", "redis", "broker"):  # every family was there to be seen
        assert f'kiln_metrics_source_up{{source="{source}"}} 1.0' in text, text[-3000:]
    exports.names["platform"] = exposed_series_names(text)

    worker, worker_url = start_worker(tmp)
    try:
        assert infer(worker_url).status_code == 200
        exports.names["worker"] = exposed_series_names(httpx.get(f"{worker_url}/metrics", timeout=5).text)
        reason = gateway_available()
        if reason is None:
            with django_db_blocker.unblock():
                scrape_gateway(tmp, worker_url, exports.names)
        else:
            exports.missing["gateway"] = reason
        yield exports
    finally:
        worker.stop()
