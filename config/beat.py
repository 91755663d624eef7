"""Celery beat's scheduler with a heartbeat: each tick says in Redis that beat is alive.

The schedule file says nothing reliable about that (without gdbm, Python's dbm fallback keeps
its start time), so the healthcheck reads the heartbeat instead (``config.beat_health``).
Redis being down is logged once per outage; beat goes on (it cannot send tasks then either).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery.beat import PersistentScheduler
from django.conf import settings

from config.beat_health import HEARTBEAT_TTL_S, heartbeat_key
from config.redis import redis_client

logger = logging.getLogger(__name__)


class HeartbeatScheduler(PersistentScheduler):
    """``PersistentScheduler`` that writes the time of every tick to ``<instance>:beat:heartbeat``."""

    _failing = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        self.beat()
        return interval

    def beat(self) -> None:
        try:
            redis_client(timeout_s=2).set(
                heartbeat_key(settings.KILN_INSTANCE_ID), repr(time.time()), ex=HEARTBEAT_TTL_S
            )
        except redis.RedisError as exc:
            if not self._failing:
                logger.warning("cannot write beat's heartbeat: %s", exc)
            self._failing = True
            return
        self._failing = False
