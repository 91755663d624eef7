"""The routing table converges: the reconcile loop publishes again until Redis and every live gateway
hold the database's table, so a traffic change made while Redis was down reaches the gateway."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployments.models import Variant, Worker
from deployments.services.routing import build_routing_table, converge_routing_table, publish_routing_table
from inference_worker.contracts.gateway_table import (
    GatewayTableRecord,
    encode_gateway_table,
    parse_gateway_table,
    tables_key,
)
from inference_worker.contracts.routing import table_digest
from tests.support import gateway as gw
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer, broker_at
from tests.support.versions import ready_version


@pytest.fixture
def routing_key(settings: Any) -> Iterator[str]:
    key = f"kiln-test:{uuid.uuid4().hex}:routing"
    settings.KILN_ROUTING_KEY = key
    yield key
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(key, tables_key(key))
    client.close()


def _two_arms(owner: User, api: APIClient) -> None:
    """Deployment ``ab``: variants a (100%) and b (0%), each with one ready worker row."""
    ready_version(owner)
    ready_version(owner, number=2)
    created = api.post(
        "/api/v1/deployments/",
        {
            "name": "ab",
            "model": "cnn",
            "variants": [{"name": "a", "version": 1}, {"name": "b", "version": 2}],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    for port, variant in enumerate(Variant.objects.order_by("id"), start=40001):
        Worker.objects.create(
            variant=variant,
            version=variant.version,
            backend="process",
            state="ready",
            http_url=f"http://127.0.0.1:{port}",
        )


def _report(key: str, gateway_id: str, digest: str, *, age_s: float = 0.0) -> None:
    from config.redis import redis_client

    record = GatewayTableRecord(gateway_id, 1, digest, time.time() - age_s)
    redis_client().hset(tables_key(key), gateway_id, json.dumps(encode_gateway_table(record)))


@pytest.mark.django_db
def test_a_gateway_holding_another_table_gets_it_published_again_until_all_agree(
    owner: User, owner_api: APIClient, routing_key: str
) -> None:
    _two_arms(owner, owner_api)
    assert converge_routing_table()  # Redis had none
    wanted = table_digest(build_routing_table())
    _report(routing_key, "gw-up-to-date", wanted)
    _report(routing_key, "gw-gone", "0" * 64, age_s=300)  # a stopped gateway is not waited for
    assert not converge_routing_table()

    _report(routing_key, "gw-behind", "0" * 64)
    assert converge_routing_table()
    _report(routing_key, "gw-behind", wanted)
    assert not converge_routing_table()


@pytest.fixture
def private_redis(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings.REDIS_URL = server.url
    with broker_at(server.url):
        yield server
    server.stop()


def _held(server: RedisServer, key: str, gateway_id: str) -> str:
    try:
        raw = redis.Redis.from_url(server.url).hget(tables_key(key), gateway_id)
    except redis.RedisError:
        return ""
    return parse_gateway_table(json.loads(raw)).table_digest if raw else ""


@pytest.mark.django_db(transaction=True)
def test_a_traffic_change_made_while_redis_was_down_reaches_the_gateway_when_it_is_back(
    owner: User, owner_api: APIClient, private_redis: RedisServer, routing_key: str
) -> None:
    _two_arms(owner, owner_api)
    publish_routing_table()
    before = table_digest(build_routing_table())
    args = ["gateway", "--port", "0", "--redis-url", private_redis.url, "--routing-key", routing_key]
    gateway = gw.start([*args, "--gateway-id", "gw-1", "--stats-interval-s", "0.2"])
    try:
        wait_for(lambda: _held(private_redis, routing_key, "gw-1") == before, timeout=30, message="table 1")

        private_redis.stop()
        changed = owner_api.put(
            "/api/v1/deployments/ab/traffic/", {"split": {"a": 50, "b": 50}, "reason": "ab"}, format="json"
        )
        assert changed.status_code == 200, changed.content
        after = table_digest(build_routing_table())
        assert after != before

        private_redis.start()  # with its data: the old table
        wait_for(
            lambda: _held(private_redis, routing_key, "gw-1") == before, timeout=30, message="the gateway"
        )
        assert converge_routing_table()  # what every pass of the reconcile loop runs
        # The gateway reads the table on the channel and every --reload-interval-s (5 s by default):
        # after an outage the periodic read is what guarantees it (the channel can miss the message).
        wait_for(
            lambda: _held(private_redis, routing_key, "gw-1") == after, timeout=20, message="the new split"
        )
        assert not converge_routing_table()  # everyone agrees: nothing more to publish
        status, _, body = gw.get(gateway.url, "/v2/health/ready")
        assert status == 200
        assert json.loads(body)["routing_table_version"] == json.loads(
            redis.Redis.from_url(private_redis.url).get(routing_key) or b"{}"
        ).get("version")
    finally:
        gateway.stop()
