"""``kiln webhook``: subscribe a URL to release events, list subscriptions, read and redeliver the log."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kiln_client.api import ApiError, Client, UsageError
from kiln_client.progress import Progress


def cmd_webhook(client: Client, args: argparse.Namespace, out: Progress) -> int:
    if args.action == "add":
        if not args.target or not args.event:
            raise UsageError("webhook add: give the URL and at least one --event")
        body: dict[str, Any] = {"url": args.target, "event_types": args.event, "model": args.model}
        if args.secret:
            body["secret"] = args.secret
        try:
            created = client.post("/webhooks/", body)
        except ApiError as exc:
            if not (args.exist_ok and exc.status == 409 and "id" in exc.extra):
                raise
            out.line(f"webhook {exc.extra['id']}: {args.target} is subscribed already (kept: --exist-ok)")
            return 0
        out.line(f"webhook {created['id']}: {created['url']} ({', '.join(created['event_types'])})")
        print(json.dumps({"id": created["id"], "secret": created["secret"]}))  # shown this once
        return 0
    if args.action == "list":
        for w in client.get("/webhooks/", page_size=500)["results"]:
            scope = w["model"] or "*"
            state = "" if w["active"] else " (disabled)"
            print(f"{w['id']:<6} {scope:<24} {w['url']}  {','.join(w['event_types'])}{state}")
        return 0
    webhook = _number(args.target, "the webhook id")
    base = f"/webhooks/{webhook}/"
    if args.action == "deliveries":
        for d in client.get(f"{base}deliveries/", page_size=args.limit)["results"]:
            code = d["last_status_code"] or "-"
            latency = f"{d['last_latency_ms']:.0f}ms" if d["last_latency_ms"] is not None else "-"
            retry = f" next {d['next_retry_at']}" if d["next_retry_at"] else ""
            print(
                f"{d['id']:<7} {d['event_type']:<22} {d['status']:<10} {code!s:<4} {latency:<7} "
                f"x{d['attempts']} {d['created_at']}{retry}"
            )
        return 0
    if args.action == "redeliver":
        delivery = _number(args.delivery, "the delivery id")
        again = client.post(f"{base}deliveries/{delivery}/redeliver/")
        out.line(f"delivery {again['id']} queued (event {again['event_id']})")
        return 0
    if args.action == "ping":
        ping = client.post(f"{base}ping/")
        out.line(f"ping queued: delivery {ping['id']}")
        return 0
    client.delete(base)
    out.line(f"removed webhook {webhook}")
    return 0


def _number(raw: str | None, what: str) -> int:
    if raw is None or not raw.isdigit():
        raise UsageError(f"webhook: give {what} (a number)")
    return int(raw)


def add_webhook_parser(sub: Any) -> None:
    """The ``webhook`` subcommand (``sub``: the parser's subparsers)."""
    p = sub.add_parser(
        "webhook",
        help="signed webhooks: add URL --event E..., list, deliveries ID, redeliver ID DELIVERY, "
        "ping ID, remove ID",
    )
    p.add_argument("action", choices=["add", "list", "deliveries", "redeliver", "ping", "remove"])
    p.add_argument("target", nargs="?", help="add: the receiver's URL; otherwise the webhook id")
    p.add_argument("delivery", nargs="?", help="redeliver: the delivery id")
    p.add_argument("--event", action="append", help="add: an event type (repeat for more)")
    p.add_argument("--model", help="add: only this model's events (default: every model, staff only)")
    p.add_argument("--secret", help="add: the signing secret (default: generated and printed once)")
    p.add_argument("--limit", type=int, default=50, help="deliveries: how many, newest first")
    p.add_argument(
        "--exist-ok",
        action="store_true",
        help="add: a webhook for this URL and model exists: exit 0 (a rerun)",
    )
    p.set_defaults(run=cmd_webhook)
