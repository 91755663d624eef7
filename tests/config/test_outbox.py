"""The transactional outbox: a write whose task cannot be queued (Redis down) still succeeds, once,
and its task goes out by itself when Redis is back; never a 500 beside a half-done write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from config import dispatch
from config.outbox.delivery import deliver_pending
from config.outbox.models import OutboxMessage
from registry.models import ModelVersion
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer, broker_at
from tests.support.services import CeleryBeat, CeleryWorker
from tests.support.torch_models import save_torchscript_cnn
from tests.support.uploads import create_model, upload


@pytest.fixture
def private_redis(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    """A Redis of this test's own, as the broker and the platform's Redis of this process."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings.REDIS_URL = server.url
    settings.CELERY_BROKER_URL = server.url
    with broker_at(server.url):
        yield server
    server.stop()


def _queued(server: RedisServer, queue: str) -> list[Any]:
    import redis

    client = redis.Redis.from_url(server.url)
    return [json.loads(raw)["headers"]["task"] for raw in client.lrange(queue, 0, -1)]


@pytest.mark.django_db(transaction=True)
def test_a_message_sent_while_redis_is_down_stays_in_the_outbox_until_the_sweep_sends_it(
    private_redis: RedisServer, settings: Any
) -> None:
    private_redis.stop()
    with transaction.atomic():
        dispatch.send_on_commit("deployments.reconcile_deployment", 41)
    message = OutboxMessage.objects.get()  # the commit went through; nothing was raised
    assert (message.task, message.args, message.attempts) == ("deployments.reconcile_deployment", [41], 1)
    assert "Error" in message.last_error or "refused" in message.last_error.lower()

    private_redis.start()
    OutboxMessage.objects.update(created_at=message.created_at.replace(year=2000))  # past the fresh window
    assert deliver_pending() == {"sent": 1, "pending": 0}
    assert _queued(private_redis, settings.CELERY_TASK_DEFAULT_QUEUE) == ["deployments.reconcile_deployment"]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_sends_nothing(private_redis: RedisServer, settings: Any) -> None:
    def change_that_fails() -> None:
        with transaction.atomic():
            dispatch.send_on_commit("deployments.reconcile_deployment", 7)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        change_that_fails()
    assert not OutboxMessage.objects.exists()
    assert _queued(private_redis, settings.CELERY_TASK_DEFAULT_QUEUE) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_upload_during_a_redis_outage_answers_201_once_and_converts_when_redis_is_back(
    private_redis: RedisServer, celery_worker: CeleryWorker, owner_api: APIClient, tmp_path: Path
) -> None:
    celery_worker.stop()
    celery_worker.env.update(REDIS_URL=private_redis.url, CELERY_BROKER_URL=private_redis.url)
    celery_worker.start()
    beat = CeleryBeat({**celery_worker.env, "KILN_OUTBOX_SWEEP_S": "1"}, tmp_path / "beat.log")
    beat.start()
    try:
        create_model(owner_api, "outage")
        signature = save_torchscript_cnn(tmp_path / "cnn.pt")
        private_redis.stop()
        response = upload(owner_api, "outage", tmp_path / "cnn.pt", signature=signature)
        assert response.status_code == 201, response.content
        assert response["Content-Type"].startswith("application/json")
        assert ModelVersion.objects.filter(model__name="outage").count() == 1
        assert OutboxMessage.objects.filter(task="registry.convert_version").count() == 1

        private_redis.start()
        version = wait_for(
            lambda: ModelVersion.objects.filter(model__name="outage", status__in=("ready", "failed")).first(),
            timeout=240,
            interval=0.5,
            message=f"the conversion (beat log: {beat.log_tail()})",
        )
        assert version.status == "ready", version.status_reason
        assert not OutboxMessage.objects.exists()
        assert ModelVersion.objects.filter(model__name="outage").count() == 1
    finally:
        beat.stop()
