"""``GET /metrics``: django-prometheus' series and the platform's own, in one exposition.

Under gunicorn (``make run``) several processes answer requests, each with its
own django-prometheus counters. With ``PROMETHEUS_MULTIPROC_DIR`` set (runstack
sets and clears it), prometheus_client writes them to files there and a scrape
merges them, so any process reports the totals of all. The platform collector
reads shared state at scrape time and is therefore added once to the per-scrape
registry, never written to those files (it would be summed once per process).
Without the variable (tests, ``manage.py runserver``) the process-wide registry
is exposed, with the collector registered in it once.

Like ``/healthz``, it needs no login: Prometheus scrapes it, and it binds to
127.0.0.1 by default.
"""

from __future__ import annotations

import os

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from observability.collector import PlatformCollector

_registered = False


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def register_platform_collector() -> None:
    """Add the collector to the process-wide registry (single-process mode) exactly once."""
    global _registered
    if not _registered and multiprocess_dir() is None:
        REGISTRY.register(PlatformCollector())
        _registered = True


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if multiprocess_dir() is not None:
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(PlatformCollector())
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
