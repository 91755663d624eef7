"""Sending a delivery: claim the row, check the target again, POST the signed body, record the outcome.

At least once, never twice after a success: the claim is a conditional UPDATE, so a Celery
message delivered again (or the sweep's) finds nothing to do once the row is ``delivered``.
A worker killed mid-send leaves ``sending`` with a lease; the sweep claims it again after the
lease, so the receiver may then see the event twice (same ``X-Kiln-Delivery``: it deduplicates).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from config import dispatch
from deployments.webhooks.events import DELIVER_TASK
from deployments.webhooks.models import DeliveryStatus, WebhookDelivery
from deployments.webhooks.signing import signature
from deployments.webhooks.targets import Target, TargetRefusedError, check_url

logger = logging.getLogger(__name__)

LEASE_MARGIN_S = 30.0
USER_AGENT = "Kiln-Webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: an HTTP status (None when no answer came), its latency, an error."""

    status_code: int | None
    latency_ms: float | None
    error: str

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff_s(attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt: doubling from the base, capped."""
    return float(
        min(settings.KILN_WEBHOOK_BACKOFF_MAX_S, settings.KILN_WEBHOOK_BACKOFF_S * 2 ** (attempts - 1))
    )


def _claimable(now: datetime) -> Q:
    due = Q(status=DeliveryStatus.PENDING) & (Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now))
    return due | Q(status=DeliveryStatus.SENDING, lease_until__lt=now)


def claim(delivery_id: int) -> WebhookDelivery | None:
    """Take the delivery for one attempt, or None when it is not due (or delivered, or failed)."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.KILN_WEBHOOK_TIMEOUT_S + LEASE_MARGIN_S)
    updated = WebhookDelivery.objects.filter(_claimable(now), pk=delivery_id).update(
        status=DeliveryStatus.SENDING, lease_until=lease, attempts=F("attempts") + 1
    )
    if updated != 1:
        return None
    return WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)


def post(target: Target, *, body: str, headers: dict[str, str]) -> httpx.Response:
    """POST to the checked address, naming the host in ``Host`` (and in TLS, for its certificate)."""
    url = httpx.URL(target.url).copy_with(host=str(target.address))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    default_port = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal in brackets
    if target.port != default_port:
        host = f"{host}:{target.port}"
    with httpx.Client(
        timeout=settings.KILN_WEBHOOK_TIMEOUT_S, follow_redirects=False, trust_env=False
    ) as client:
        return client.post(
            url, content=body.encode(), headers={**headers, "Host": host}, extensions=extensions
        )


def attempt(delivery: WebhookDelivery) -> Outcome:
    """One POST of the delivery's body, signed now; the target is checked again first."""
    webhook = delivery.webhook
    if not webhook.active:
        return Outcome(None, None, "the webhook is disabled")
    try:
        target = check_url(webhook.url)
    except TargetRefusedError as exc:
        return Outcome(None, None, exc.message)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Kiln-Event": delivery.event_type,
        "X-Kiln-Delivery": str(delivery.event_id),
        "X-Kiln-Signature": signature(webhook.secret, int(time.time()), delivery.body),
    }
    started = time.perf_counter()
    try:
        response = post(target, body=delivery.body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(None, (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}"[:2000])
    latency = (time.perf_counter() - started) * 1000
    error = "" if response.is_success else f"HTTP {response.status_code}: {response.text[:500]}"
    return Outcome(response.status_code, latency, error)


def record(delivery: WebhookDelivery, outcome: Outcome) -> str:
    """Store the attempt's outcome; schedule the next one (or give up). Returns the new status."""
    now = timezone.now()
    fields: dict[str, object] = {
        "last_status_code": outcome.status_code,
        "last_latency_ms": outcome.latency_ms,
        "last_error": outcome.error,
        "lease_until": None,
    }
    wait = None
    if outcome.delivered:
        status = DeliveryStatus.DELIVERED
        fields.update(delivered_at=now, next_retry_at=None)
    elif delivery.attempts >= settings.KILN_WEBHOOK_MAX_ATTEMPTS:
        status = DeliveryStatus.FAILED
        fields["next_retry_at"] = None
    else:
        status = DeliveryStatus.PENDING
        wait = backoff_s(delivery.attempts)
        fields["next_retry_at"] = now + timedelta(seconds=wait)
    # Only the attempt that holds the claim writes (a slower one past its lease does not).
    WebhookDelivery.objects.filter(
        pk=delivery.pk, status=DeliveryStatus.SENDING, attempts=delivery.attempts
    ).update(status=status, **fields)
    if wait is not None:
        try:
            dispatch.send(DELIVER_TASK, delivery.pk, countdown=wait)
        except Exception:  # the broker is down: the sweep sends it when it is due
            logger.warning("webhook delivery %s: retry left to the sweep", delivery.pk, exc_info=True)
    return status


def deliver(delivery_id: int) -> str:
    """Make one attempt at a delivery if it is due; returns its status after (or ``skipped``)."""
    delivery = claim(delivery_id)
    if delivery is None:
        return "skipped"
    return record(delivery, attempt(delivery))


def send_due() -> int:
    """Queue every delivery overdue by more than a sweep interval (its retry message was lost)."""
    now = timezone.now()
    overdue = now - timedelta(seconds=settings.KILN_WEBHOOK_SWEEP_S)
    ids = list(
        WebhookDelivery.objects.filter(
            Q(status=DeliveryStatus.PENDING, next_retry_at__lte=overdue)
            | Q(status=DeliveryStatus.SENDING, lease_until__lt=now)
        ).values_list("pk", flat=True)[:500]
    )
    for pk in ids:
        dispatch.send(DELIVER_TASK, pk)
    return len(ids)
