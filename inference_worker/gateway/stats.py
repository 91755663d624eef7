"""Redis side of the gateway: the routing table it follows and the stats it writes.

``TableWatcher`` subscribes to the routing key's channel and reloads the key
on every message, and also every ``--reload-interval-s``, so a message missed
while Redis or the subscription was down heals at the next reload. The key is
the truth: whatever it holds is applied (reads are serialized, so an older
read never lands after a newer one); an unreadable or invalid table is logged
and the previous one stays.

``StatsPublisher`` writes the cumulative snapshot into the hash
``<routing key>:stats``, field ``<gateway id>``, every ``--stats-interval-s``,
and sets the hash to expire after ``STATS_TTL_S`` without a write from any
gateway; beside it, which table the gateway holds (``contracts.gateway_table``),
so the platform republishes until every gateway serves its database's table.
Redis being down never stops the gateway: it logs once per outage
and keeps serving with the table it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.gateway_stats import GatewaySnapshot, encode_snapshot
from inference_worker.contracts.gateway_table import GatewayTableRecord, encode_gateway_table, tables_key
from inference_worker.contracts.routing import parse_table
from inference_worker.gateway.metrics import GatewayMetrics
from inference_worker.gateway.routing import RoutingTable, build_table

log = logging.getLogger("inference_worker.gateway")

STATS_TTL_S = 300
_BACKOFF_S = (0.1, 0.5, 1.0, 2.0)


def redis_client(url: str) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
    )
    return client


class TableWatcher:
    """Keeps ``apply`` fed with the latest table in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        interval_s: float,
        apply: Callable[[RoutingTable], None],
        metrics: GatewayMetrics,
    ) -> None:
        self.client = client
        self.key = key
        self.interval_s = interval_s
        self.apply = apply
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._last_payload: bytes | None = None
        self._failing = False

    async def run(self) -> None:
        await asyncio.gather(self._poll(), self._listen())

    async def reload(self) -> bool:
        """Read the key and apply it; False when there is none or it could not be read or used."""
        async with self._lock:
            try:
                payload = await self.client.get(self.key)
            except (RedisError, OSError) as exc:
                self._fail(f"cannot read the routing table at {self.key!r}: {exc}")
                return False
            if payload is None:
                self._fail(f"no routing table at Redis key {self.key!r} yet")
                return False
            if not isinstance(payload, bytes):
                payload = str(payload).encode()
            if payload == self._last_payload:
                self.metrics.reloads["unchanged"] += 1
                return True
            try:
                table = build_table(parse_table(orjson.loads(payload)))
            except (orjson.JSONDecodeError, ContractError) as exc:
                self._fail(f"refusing the routing table at {self.key!r}: {exc}")
                return False
            self._last_payload = payload
            self._failing = False
            self.metrics.reloads["applied"] += 1
            self.apply(table)
            return True

    def _fail(self, message: str) -> None:
        self.metrics.reloads["failed"] += 1
        if not self._failing:
            log.warning("%s (keeping the current table)", message)
        self._failing = True

    async def _poll(self) -> None:
        while True:
            await self.reload()
            await asyncio.sleep(self.interval_s)

    async def _listen(self) -> None:
        attempt = 0
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.key)
                attempt = 0
                await self.reload()  # whatever was published while we were not subscribed
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self.reload()
            except (RedisError, OSError) as exc:
                if attempt == 0:
                    log.warning("routing channel %r: %s; resubscribing", self.key, exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            attempt += 1


class StatsPublisher:
    """Writes the snapshot to ``<routing key>:stats`` every interval (and once more at stop)."""

    def __init__(
        self,
        client: aioredis.Redis,
        routing_key: str,
        gateway_id: str,
        interval_s: float,
        snapshot: Callable[[], GatewaySnapshot],
        table: Callable[[], GatewayTableRecord] | None = None,
    ) -> None:
        self.client = client
        self.key = f"{routing_key}:stats"
        self.tables_key = tables_key(routing_key)
        self.table = table
        self.gateway_id = gateway_id
        self.interval_s = interval_s
        self.snapshot = snapshot
        self._failing = False

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            next_at += self.interval_s
            await asyncio.sleep(max(next_at - time.monotonic(), 0.0))
            await self.publish()

    async def publish(self) -> bool:
        payload = orjson.dumps(encode_snapshot(self.snapshot()))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(self.key, self.gateway_id, payload)
                pipe.expire(self.key, STATS_TTL_S)
                if self.table is not None:
                    pipe.hset(
                        self.tables_key, self.gateway_id, orjson.dumps(encode_gateway_table(self.table()))
                    )
                    pipe.expire(self.tables_key, STATS_TTL_S)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("cannot write gateway stats to %r: %s", self.key, exc)
            self._failing = True
            return False
        self._failing = False
        return True
