"""One Redis client factory for the control plane: ``config.redis.redis_client``."""

from __future__ import annotations

import ast
from typing import Any

from config.redis import redis_client
from tests.support.paths import ROOT

CONTROL_PLANE = ("config", "accounts", "registry", "deployments", "dashboard", "observability")
_MAKERS = {"redis.Redis", "redis.StrictRedis", "redis.Redis.from_url", "redis.from_url", "Redis.from_url"}


def test_the_client_is_made_once_per_url_and_timeout_with_that_timeout(settings: Any) -> None:
    default = redis_client()
    short = redis_client(timeout_s=2.0)
    base, _, db = settings.REDIS_URL.rpartition("/")
    other = 14 if db == "15" else 15
    other_db = redis_client(f"{base}/{other}")

    assert redis_client() is default
    assert redis_client(settings.REDIS_URL) is default
    assert short is not default
    assert other_db is not default
    assert default.connection_pool.connection_kwargs["socket_timeout"] == 5.0
    assert short.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.0
    assert other_db.connection_pool.connection_kwargs["db"] == other
    assert default.ping() is True


def test_no_control_plane_module_but_the_factory_makes_a_redis_client() -> None:
    makers = set()
    for package in CONTROL_PLANE:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in _MAKERS:
                    makers.add(str(path.relative_to(ROOT)))
    assert makers == {"config/redis.py"}
