"""``kiln webhook`` against the live platform: add, list, ping, the delivery log, redeliver, remove."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import User

from accounts.tokens import create_api_token
from deployments.webhooks.delivery import deliver
from deployments.webhooks.models import Webhook, WebhookDelivery
from tests.support.paths import ROOT
from tests.support.versions import ready_version
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db(transaction=True)


def kiln(*args: str, url: str, token: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    environment.update({"KILN_URL": url, "KILN_TOKEN": token})
    return subprocess.run(
        [sys.executable, "-m", "kiln_client", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_webhook_is_added_pinged_logged_redelivered_and_removed_from_the_cli(
    live_server: Any, owner: User, receiver: WebhookReceiver
) -> None:
    ready_version(owner)
    token = create_api_token(user=owner)
    url = live_server.url

    events = ["--event", "alias.moved", "--event", "version.ready"]
    added = kiln("webhook", "add", receiver.url, *events, "--model", "cnn", url=url, token=token)

    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    webhook = Webhook.objects.get()
    assert (created["id"], created["secret"]) == (webhook.pk, webhook.secret)
    assert webhook.event_types == ["version.ready", "alias.moved"]
    swapped = ["--event", "version.ready", "--event", "alias.moved"]  # the same events, another order
    again = kiln("webhook", "add", receiver.url, *swapped, "--model", "cnn", url=url, token=token)
    kept = kiln("webhook", "add", receiver.url, *events, "--model", "cnn", "--exist-ok", url=url, token=token)
    assert again.returncode == 1
    assert f"webhook {webhook.pk} sends these events to this URL already" in again.stderr
    assert (kept.returncode, kept.stdout) == (0, ""), kept.stderr
    assert f"webhook {webhook.pk}: {receiver.url} is subscribed already (kept: --exist-ok)" in kept.stderr
    assert Webhook.objects.count() == 1
    listed = kiln("webhook", "list", url=url, token=token)
    assert listed.returncode == 0, listed.stderr
    assert receiver.url in listed.stdout
    assert "cnn" in listed.stdout

    pinged = kiln("webhook", "ping", str(webhook.pk), url=url, token=token)
    assert pinged.returncode == 0, pinged.stderr
    ping = WebhookDelivery.objects.get()
    assert deliver(ping.pk) == "delivered"
    log = kiln("webhook", "deliveries", str(webhook.pk), url=url, token=token)
    assert log.returncode == 0, log.stderr
    assert log.stdout.split()[:5] == [str(ping.pk), "ping", "delivered", "200", log.stdout.split()[4]]

    again = kiln("webhook", "redeliver", str(webhook.pk), str(ping.pk), url=url, token=token)
    assert again.returncode == 0, again.stderr
    assert WebhookDelivery.objects.filter(redelivery_of=ping, event_id=ping.event_id).count() == 1

    refused = kiln(
        "webhook",
        "add",
        "http://10.0.0.1/hook",
        "--event",
        "alias.moved",
        "--model",
        "cnn",
        url=url,
        token=token,
    )
    assert refused.returncode == 1
    assert "url:" in refused.stderr

    removed = kiln("webhook", "remove", str(webhook.pk), url=url, token=token)
    assert removed.returncode == 0, removed.stderr
    assert not Webhook.objects.exists()
