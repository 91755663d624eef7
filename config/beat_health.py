"""Beat's health, by what beat does: every scheduler tick writes a heartbeat to Redis.

``config.beat.HeartbeatScheduler`` sets ``<KILN_INSTANCE_ID>:beat:heartbeat`` to the Unix time of
its latest tick (beat ticks at least every ``CELERY_BEAT_MAX_LOOP_INTERVAL`` seconds). The compose
healthcheck runs ``python -m config.beat_health --max-age-s 30``: exit 0 when the heartbeat is
younger than that, 1 (with the reason) otherwise. It reads the environment (the instance id is
``KILN_INSTANCE_ID``, else the one ``DATABASE_URL`` gives, as in the settings) and sets up no Django
(the client comes from ``config.redis`` with an explicit URL), so a check costs little.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import redis

from config.env import instance_id_for

HEARTBEAT_TTL_S = 3600


def heartbeat_key(instance_id: str) -> str:
    """The Redis key of the heartbeat of beat for platform instance ``instance_id``."""
    return f"{instance_id}:beat:heartbeat"


def heartbeat_age(url: str, instance_id: str) -> float | None:
    """Seconds since beat's last tick; None when it never ticked (or the key expired)."""
    from config.redis import redis_client

    raw = redis_client(url, timeout_s=3).get(heartbeat_key(instance_id))
    return None if raw is None else time.time() - float(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m config.beat_health", description=__doc__)
    parser.add_argument("--max-age-s", type=float, default=30.0, help="oldest heartbeat that is healthy")
    args = parser.parse_args(argv)
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    instance = os.environ.get("KILN_INSTANCE_ID") or instance_id_for(os.environ.get("DATABASE_URL", ""))
    try:
        age = heartbeat_age(url, instance)
    except (redis.RedisError, ValueError) as exc:
        print(f"unhealthy: cannot read beat's heartbeat: {exc}", file=sys.stderr)
        return 1
    if age is None:
        print(f"unhealthy: beat has not ticked ({heartbeat_key(instance)} is missing)", file=sys.stderr)
        return 1
    if age > args.max_age_s:
        print(f"unhealthy: beat's last tick was {age:.0f} s ago", file=sys.stderr)
        return 1
    print(f"healthy: beat ticked {age:.1f} s ago")
    return 0


if __name__ == "__main__":
    sys.exit(main())
