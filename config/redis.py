"""The platform's one way to get a Redis client (routing table, shared metrics, hints, the broker's queues).

One client per URL, timeout and process, made on first use: a client holds a connection pool,
and redis-py gives a forked child (a Celery or gunicorn worker) fresh connections on its own.
Every client has short socket timeouts, so a Redis outage costs a caller a quick ``RedisError``
instead of a hung reconcile pass, request or scrape.
"""

from __future__ import annotations

import redis
from django.conf import settings

_clients: dict[tuple[str, float], redis.Redis] = {}


def redis_client(url: str | None = None, *, timeout_s: float = 5.0) -> redis.Redis:
    """The client of ``url`` (``REDIS_URL`` when None); connects and reads give up after ``timeout_s``."""
    key = (url or str(settings.REDIS_URL), timeout_s)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(key[0], socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        _clients[key] = client
    return client
