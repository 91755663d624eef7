"""``kiln`` commands of the release path: deploy, wait, traffic, rollout, promote, autoscale."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kiln_client.api import ApiError, Client, UsageError
from kiln_client.progress import Progress

TERMINAL_ROLLOUT = ("succeeded", "rolled_back", "aborted", "timed_out")


def cmd_traffic(client: Client, args: argparse.Namespace, out: Progress) -> int:
    if not args.split:
        print(json.dumps(client.get(f"/deployments/{args.deployment}/traffic/")["split"], indent=2))
        return 0
    split = {}
    for item in args.split:
        name, _, weight = item.partition("=")
        if not weight.isdigit():
            raise UsageError(f"{item!r}: write splits as variant=weight, e.g. a=90 b=10")
        split[name] = int(weight)
    result = client.put(f"/deployments/{args.deployment}/traffic/", {"split": split, "reason": args.reason})
    out.line(" / ".join(f"{n} {v['weight']}%" for n, v in result["split"].items()))
    return 0


def cmd_rollout(client: Client, args: argparse.Namespace, out: Progress) -> int:
    base = f"/deployments/{args.deployment}/rollouts/"
    if args.action == "start":
        if not args.candidate:
            raise UsageError("rollout start: --candidate is required")
        try:
            steps = [int(s) for s in args.steps.split(",")] if args.steps else None
        except ValueError:
            raise UsageError(f"--steps: write percentages as 5,25,50,100, not {args.steps!r}") from None
        given = {
            "baseline": args.baseline,
            "steps": steps,
            "hold_s": args.hold,
            "max_error_rate": args.max_error_rate,
            "max_p99_ms": args.max_p99_ms,
            "min_shadow_agreement": args.min_shadow_agreement,
            "min_requests": args.min_requests,
            "replica_timeout_s": args.replica_timeout,
        }  # what is not given takes the platform's default
        body = {"candidate": args.candidate, **{k: v for k, v in given.items() if v is not None}}
        rollout = client.post(base, body)
        out.line(f"rollout {rollout['id']} of {rollout['candidate']} started: steps {rollout['steps']}")
        if not args.watch:
            return 0
        return _watch_rollout(client, args.deployment, rollout["id"], args.timeout, out)
    rollout_id = args.id or _latest_rollout(client, base)
    if args.action == "watch":
        return _watch_rollout(client, args.deployment, rollout_id, args.timeout, out)
    rollout = client.post(f"{base}{rollout_id}/{args.action}/")
    out.line(f"rollout {rollout_id}: {rollout['state']}")
    return 0


def _latest_rollout(client: Client, base: str) -> int:
    rollouts = client.get(base)
    if not rollouts:
        raise ApiError("this deployment has no rollout")
    return int(rollouts[0]["id"])


def _watch_rollout(client: Client, deployment: str, rollout_id: int, timeout: float, out: Progress) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rollout = client.get(f"/deployments/{deployment}/rollouts/{rollout_id}/")
        measured = _evaluation_text(rollout.get("last_evaluation") or {})
        out.line(f"rollout {rollout_id}: {rollout['state']} at {rollout['current_weight']}% ({measured})")
        if rollout["state"] in TERMINAL_ROLLOUT:
            break
        if time.monotonic() > deadline:
            raise ApiError(f"rollout {rollout_id} still {rollout['state']} after {timeout:.0f} s")
        time.sleep(2.0)
    if rollout["state"] != "succeeded":
        sys.stderr.write(f"rollout {rollout['state']}: {rollout['reason']}\n")
        return 1
    return 0


def _evaluation_text(evaluation: dict[str, Any]) -> str:
    """Each objective's value and sample size, and what the rollout waits for."""
    parts = [
        f"{name} {'n/a' if o.get('value') is None else format(o['value'], '.4g')} over {o.get('samples', 0)}"
        for name, o in (evaluation.get("objectives") or {}).items()
    ]
    if evaluation.get("note"):
        parts.append(str(evaluation["note"]))
    return "; ".join(parts) or "not measured yet"


def _variant_arg(raw: str) -> dict[str, Any]:
    """``NAME:key=value,...`` (alias, version, replicas, weight, device, backend) as the API's variant."""
    name, _, rest = raw.partition(":")
    variant: dict[str, Any] = {"name": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in ("alias", "version", "replicas", "weight", "device", "backend") or not value:
            raise UsageError(f"--variant {raw!r}: write NAME:alias=production,replicas=2,weight=100")
        variant[key] = int(value) if key in ("version", "replicas", "weight") and value.isdigit() else value
    return variant


def cmd_deploy(client: Client, args: argparse.Namespace, out: Progress) -> int:
    body = {
        "name": args.deployment,
        "model": args.model,
        "variants": [_variant_arg(raw) for raw in args.variant],
        **({"on_alias_move": args.on_alias_move} if args.on_alias_move else {}),
    }
    try:
        created = client.post("/deployments/", body)
        out.line(
            f"deployment {created['name']} created: " + ", ".join(v["name"] for v in created["variants"])
        )
        for warning in created.get("warnings", []):
            out.line(f"warning: {warning}")
    except ApiError as exc:
        if not (args.exist_ok and exc.status == 409):
            raise
        out.line(f"deployment {args.deployment} exists: kept as it is")
    if not args.wait:
        return 0
    return _wait_deployment(client, args.deployment, args.timeout, out)


def cmd_wait(client: Client, args: argparse.Namespace, out: Progress) -> int:
    return _wait_deployment(client, args.deployment, args.timeout, out)


def _wait_deployment(client: Client, name: str, timeout: float, out: Progress) -> int:
    """Until every variant has its replicas ready on the version it serves; 1 when it failed."""
    deadline = time.monotonic() + timeout
    while True:
        deployment = client.get(f"/deployments/{name}/")
        pending = [
            f"{v['name']} {sum(1 for w in v['workers'] if _serving(w, v))}/{v['replicas']}"
            for v in deployment["variants"]
            if sum(1 for w in v["workers"] if _serving(w, v)) < v["replicas"]
        ]
        out.line(f"{name}: {deployment['status']}" + (f" (ready: {', '.join(pending)})" if pending else ""))
        if deployment["status"] == "failed":
            sys.stderr.write(f"deployment failed: {deployment['status_reason']}\n")
            return 1
        if not pending:
            return 0
        if time.monotonic() > deadline:
            raise ApiError(f"{name} is not ready after {timeout:.0f} s: {', '.join(pending)}")
        time.sleep(2.0)


def _serving(worker: dict[str, Any], variant: dict[str, Any]) -> bool:
    return bool(worker["state"] == "ready" and worker["version"] == variant["version"])


def cmd_promote(client: Client, args: argparse.Namespace, out: Progress) -> int:
    result = client.post(
        f"/deployments/{args.deployment}/variants/{args.variant}/promote/", {"reason": args.reason}
    )
    rollout = result["rollout"]
    out.line(
        f"promoted {args.variant} (v{rollout['version']}, forced): rollout {rollout['id']} {rollout['state']}"
    )
    if not args.watch:
        return 0
    return _watch_rollout(client, args.deployment, rollout["id"], args.timeout, out)


AUTOSCALING_FLAGS = (
    ("min", "min_replicas", int, "replicas kept without load (0: scale to zero when idle)"),
    ("max", "max_replicas", int, "replicas never exceeded"),
    ("target", "target_in_flight", float, "requests in flight per replica to aim for"),
    ("upscale_delay", "upscale_delay_s", float, "seconds of load averaged to scale up"),
    (
        "downscale_delay",
        "downscale_delay_s",
        float,
        "seconds of load averaged (and since a change) to scale down",
    ),
    ("idle", "idle_before_zero_s", float, "seconds without a request before the last replica stops (min 0)"),
)
"""Flag, API field, type, help: the platform checks bounds and fills defaults (GET shows them)."""


def cmd_autoscale(client: Client, args: argparse.Namespace, out: Progress) -> int:
    path = f"/deployments/{args.deployment}/variants/{args.variant}/"
    if args.off:
        variant = client.delete(f"{path}autoscaling/")
        out.line(f"{args.deployment}/{args.variant}: autoscaling off, {variant['replicas']} replica(s)")
        return 0
    given = {field: getattr(args, flag) for flag, field, _, _ in AUTOSCALING_FLAGS}
    given = {field: value for field, value in given.items() if value is not None}
    variant = client.put(f"{path}autoscaling/", given) if given else client.get(path)
    print(json.dumps({"replicas": variant["replicas"], "autoscaling": variant["autoscaling"]}, indent=2))
    return 0
