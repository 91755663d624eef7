"""``kiln``: the platform's REST API from a shell or a CI job.

Configuration: ``KILN_URL`` (default http://127.0.0.1:8000) and ``KILN_TOKEN``
(or ``KILN_TOKEN_FILE``). Exit status: 0 done, 1 the platform refused or the
conversion failed (the reason is printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kiln_client import __version__
from kiln_client.advice import add_advice_parsers
from kiln_client.api import ApiError, Client, UsageError
from kiln_client.deploying import (
    AUTOSCALING_FLAGS,
    cmd_autoscale,
    cmd_deploy,
    cmd_promote,
    cmd_rollout,
    cmd_traffic,
    cmd_wait,
)
from kiln_client.onnx_files import external_data_for
from kiln_client.progress import Progress
from kiln_client.webhooks import add_webhook_parser

TERMINAL_VERSION = ("ready", "failed")
STATES = ["registered", "converting", "ready", "failed"]


def _json_arg(raw: str | None, what: str) -> Any:
    if raw is None:
        return None
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what}: not valid JSON ({exc})") from None


def _text_file(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what}: cannot read {path} ({exc})") from None


def _ci_metadata(args: argparse.Namespace) -> dict[str, str]:
    """Git commit and CI run URL from the flags, else from common CI environment variables."""
    env = os.environ
    commit = args.git_commit or env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or env.get("GIT_COMMIT")
    run_url = args.ci_run_url or env.get("CI_JOB_URL") or env.get("BUILD_URL")
    if not run_url and env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        run_url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    meta = {"source": "kiln-cli"}
    if commit:
        meta["git_commit"] = commit
    if run_url:
        meta["ci_run_url"] = run_url
    return meta


def _tolerance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parity-atol", type=float, help="this version's parity atol (default: the platform's)")
    p.add_argument("--parity-rtol", type=float, help="this version's parity rtol (default: the platform's)")


def _not_a_file(path: Path) -> str:
    if not path.is_dir():
        return "no such file"
    if (path / "config.json").is_file():
        return (
            "a directory, not a model file (a Hugging Face save_pretrained() folder holds weights, not "
            "the model's code): upload the model exported to one file, torch.export.save() (.pt2), "
            "torch.onnx.export() or torch.jit.trace()"
        )
    return "a directory, not a model file"


def cmd_upload(client: Client, args: argparse.Namespace, out: Progress) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: {_not_a_file(path)}")
    if args.create:
        try:
            client.get(f"/models/{args.model}/")
        except ApiError as exc:
            if exc.status != 404:
                raise
            client.post("/models/", {"name": args.model, "description": args.model_description or ""})
    fields = {
        "signature": _json_arg(args.signature, "--signature"),
        "description": args.description,
        "metadata": {**_ci_metadata(args), **(_json_arg(args.metadata, "--metadata") or {})},
        "class_labels": _text_file(args.labels, "--labels"),
        "parity_atol": args.parity_atol,
        "parity_rtol": args.parity_rtol,
    }
    external = external_data_for(path, args.external_data)
    if external is not None:
        out.line(f"with its external data {external.name} ({external.stat().st_size} bytes)")
    version = client.upload(
        args.model, path, fields, lambda done, total: out.bar("uploading", done, total), external
    )
    number = version["version"]
    digest, fmt = version["source_sha256"][:12], version["source_format"]
    out.line(f"registered {args.model} v{number} (sha256 {digest}…, {fmt})")
    if version.get("same_bytes_as"):
        out.line(f"note: the same bytes as v{version['same_bytes_as']}")
    if not args.wait:
        print(json.dumps({"model": args.model, "version": number, "status": version["status"]}))
        return 0
    return _wait_version(client, args.model, number, args.timeout, out)


def _wait_version(client: Client, model: str, number: int, timeout: float, out: Progress) -> int:
    deadline = time.monotonic() + timeout
    while True:
        version = client.get(f"/models/{model}/versions/{number}/")
        progress = version.get("progress") or ""
        detail = "" if progress == version["status"] or version["status"] in TERMINAL_VERSION else progress
        out.line(f"v{number}: {version['status']} {detail}".rstrip())
        if version["status"] in TERMINAL_VERSION:
            break
        if time.monotonic() > deadline:
            raise ApiError(f"v{number} is still {version['status']} after {timeout:.0f} s")
        time.sleep(1.0)
    print(
        json.dumps(
            {
                "model": model,
                "version": number,
                "status": version["status"],
                "parity": (version.get("report") or {}).get("parity", {}).get("outputs"),
            }
        )
    )
    if version["status"] == "failed":
        sys.stderr.write(f"conversion failed: {version['status_reason']}\n")
        return 1
    return 0


def cmd_models(client: Client, args: argparse.Namespace, out: Progress) -> int:
    filters = {k: getattr(args, k) for k in ("search", "tag", "owner", "team", "state")}
    page = client.get("/models/", page=args.page, page_size=args.page_size, **filters)
    for m in page["results"]:
        aliases = ",".join(f"{a['name']}=v{a['version']}" for a in m["aliases"]) or "-"
        tags = ",".join(m["tags"]) or "-"
        print(f"{m['name']:<32} v{m['latest_version']:<5} {aliases:<24} {m['owner']:<16} {tags}")
    pages = max(1, -(-page["count"] // args.page_size))
    count = page["count"]
    sys.stderr.write(f"page {args.page} of {pages} ({count} model{'' if count == 1 else 's'})\n")
    return 0


def cmd_versions(client: Client, args: argparse.Namespace, out: Progress) -> int:
    page = client.get(f"/models/{args.model}/versions/", status=args.status, page_size=args.limit)
    for v in page["results"]:
        aliases = ",".join(v["aliases"]) or "-"
        print(
            f"v{v['version']:<5} {v['status']:<11} {v['source_format']:<13} {aliases:<20} {v['created_at']}"
        )
    return 0


def cmd_show(client: Client, args: argparse.Namespace, out: Progress) -> int:
    print(json.dumps(client.get(f"/models/{args.model}/versions/{args.version}/"), indent=2))
    return 0


def cmd_convert(client: Client, args: argparse.Namespace, out: Progress) -> int:
    tolerance = {"parity_atol": args.parity_atol, "parity_rtol": args.parity_rtol}
    body = {key: value for key, value in tolerance.items() if value is not None}
    version = client.post(f"/models/{args.model}/versions/{args.version}/convert/", body)
    out.line(f"{args.model} v{args.version}: conversion queued")
    if not args.wait:
        print(json.dumps({"model": args.model, "version": args.version, "status": version["status"]}))
        return 0
    return _wait_version(client, args.model, args.version, args.timeout, out)


def cmd_alias(client: Client, args: argparse.Namespace, out: Progress) -> int:
    path = f"/models/{args.model}/aliases/{args.alias}/"
    if args.delete:
        client.delete(path)
        out.line(f"removed alias {args.alias}")
        return 0
    if args.version is None:
        raise UsageError("give the version to point the alias at, or --delete")
    if args.if_missing:
        existing = [a for a in client.get(f"/models/{args.model}/")["aliases"] if a["name"] == args.alias]
        if existing:
            out.line(f"{args.model}@{args.alias} -> v{existing[0]['version']} (kept: it exists)")
            return 0
    alias = client.put(path, {"version": args.version})
    out.line(f"{args.model}@{args.alias} -> v{alias['version']}")
    return 0


def cmd_delete(client: Client, args: argparse.Namespace, out: Progress) -> int:
    path, what = (
        (f"/models/{args.model}/", f"model {args.model}")
        if args.whole_model
        else (f"/models/{args.model}/versions/{args.version}/", f"{args.model} v{args.version}")
    )
    try:
        client.delete(path)
    except ApiError as exc:
        if exc.status == 404 and args.if_exists:
            out.line(f"{what}: not there (kept going: --if-exists)")
            return 0
        raise
    out.line(f"deleted {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    parser.add_argument("--url", help="platform URL (default $KILN_URL)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upload", help="upload a model version (TorchScript, .pt2 or ONNX)")
    p.add_argument("model")
    p.add_argument("file")
    p.add_argument("--signature", help="JSON, or @file.json (required for TorchScript)")
    p.add_argument(
        "--external-data",
        metavar="FILE",
        help="an ONNX model's external data file (default: the file the model names, when it lies beside it)",
    )
    p.add_argument("--description")
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="the first numeric output's class names, one per line in class order (or JSON by output name); "
        "top-k answers carry them",
    )
    p.add_argument("--metadata", help="extra JSON metadata, or @file.json")
    _tolerance_arguments(p)
    p.add_argument("--git-commit", help="default: $GITHUB_SHA, $CI_COMMIT_SHA or $GIT_COMMIT")
    p.add_argument("--ci-run-url", help="default: from $GITHUB_*, $CI_JOB_URL or $BUILD_URL")
    p.add_argument("--create", action="store_true", help="create the model when it does not exist")
    p.add_argument("--model-description")
    p.add_argument("--wait", action="store_true", help="wait for the conversion; exit 1 when it fails")
    p.add_argument("--timeout", type=float, default=1800)
    p.set_defaults(run=cmd_upload)

    p = sub.add_parser("models", help="list models, a page at a time, filtered like the web list")
    p.add_argument("--search", help="substring of the name or description")
    p.add_argument("--tag")
    p.add_argument("--owner", help="owner's username")
    p.add_argument("--team", help="team's name")
    p.add_argument("--state", choices=STATES, help="state of the latest version")
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--page-size", type=int, default=50)
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("versions", help="list a model's versions")
    p.add_argument("model")
    p.add_argument("--status", choices=STATES)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=cmd_versions)

    p = sub.add_parser("show", help="show one version as JSON")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.set_defaults(run=cmd_show)

    p = sub.add_parser(
        "convert", help="convert a version again (after a failure), with its own parity tolerance"
    )
    p.add_argument("model")
    p.add_argument("version", type=int)
    _tolerance_arguments(p)
    p.add_argument("--wait", action="store_true", help="wait for the conversion; exit 1 when it fails")
    p.add_argument("--timeout", type=float, default=1800)
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("alias", help="point an alias at a version (or --delete it)")
    p.add_argument("model")
    p.add_argument("alias")
    p.add_argument("version", type=int, nargs="?")
    p.add_argument("--delete", action="store_true")
    p.add_argument("--if-missing", action="store_true", help="only set it when the alias does not exist")
    p.set_defaults(run=cmd_alias)

    p = sub.add_parser("delete", help="delete a version, or --whole-model (refused while anything uses it)")
    p.add_argument("model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("version", type=int, nargs="?")
    which.add_argument("--whole-model", action="store_true", help="the model, its aliases and every version")
    p.add_argument("--if-exists", action="store_true", help="one already gone is no error (a rerun)")
    p.set_defaults(run=cmd_delete)

    p = sub.add_parser("deploy", help="create a deployment and its variants (--variant NAME:alias=A,...)")
    p.add_argument("deployment")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME:key=value,... with alias or version, replicas, weight, device, backend; "
        "the first is the stable variant",
    )
    p.add_argument("--on-alias-move", choices=["rollout", "immediate", "manual"])
    p.add_argument("--exist-ok", action="store_true", help="a deployment of that name is kept as it is")
    p.add_argument("--wait", action="store_true", help="wait until every replica is ready")
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(run=cmd_deploy)

    p = sub.add_parser("wait", help="wait until every replica of a deployment serves its variant's version")
    p.add_argument("deployment")
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(run=cmd_wait)

    p = sub.add_parser(
        "promote", help="promote a variant now (forced, recorded): the stable one takes its version"
    )
    p.add_argument("deployment")
    p.add_argument("variant")
    p.add_argument("--reason", default="")
    p.add_argument(
        "--watch", action="store_true", help="follow it until the traffic is back on the stable variant"
    )
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(run=cmd_promote)

    p = sub.add_parser("traffic", help="show or set a deployment's split: kiln traffic NAME a=90 b=10")
    p.add_argument("deployment")
    p.add_argument("split", nargs="*")
    p.add_argument("--reason", default="")
    p.set_defaults(run=cmd_traffic)

    p = sub.add_parser("autoscale", help="show or set a variant's autoscaling policy (--off: fixed replicas)")
    p.add_argument("deployment")
    p.add_argument("variant")
    for flag, _, kind, text in AUTOSCALING_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=text)
    p.add_argument("--off", action="store_true", help="back to a fixed replica count")
    p.set_defaults(run=cmd_autoscale)

    p = sub.add_parser("rollout", help="start, watch, pause, resume or abort a guarded rollout")
    p.add_argument("action", choices=["start", "watch", "pause", "resume", "abort"])
    p.add_argument("deployment")
    p.add_argument("--id", type=int, help="rollout id (default: the latest)")
    p.add_argument("--candidate")
    p.add_argument("--baseline", help="default: the stable variant")
    p.add_argument("--steps", help="candidate weights, e.g. 5,25,50,100 (default: the platform's)")
    p.add_argument("--hold", type=float, help="seconds per step")
    p.add_argument("--max-error-rate", type=float)
    p.add_argument("--max-p99-ms", type=float)
    p.add_argument("--min-shadow-agreement", type=float)
    p.add_argument("--min-requests", type=int, help="samples each objective needs at each step")
    p.add_argument("--replica-timeout", type=float, help="seconds to wait for a ready candidate replica")
    p.add_argument("--watch", action="store_true", help="follow it; exit 1 unless it succeeds")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(run=cmd_rollout)

    add_webhook_parser(sub)
    add_advice_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Progress()
    try:
        client = Client(url=args.url)
        code: int = args.run(client, args, out)
    except UsageError as exc:
        sys.stderr.write(f"kiln: {exc}\n")
        return 2
    except ApiError as exc:
        sys.stderr.write(f"kiln: {exc.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return code
