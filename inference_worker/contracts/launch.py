"""The worker's launch spec: what the platform tells a worker it starts, as a command line.

The platform builds a ``LaunchSpec`` per worker; its backend places it
(``dataclasses.replace`` with the address, ports, model path and device the
worker sees: a container numbers its GPUs from 0) and runs ``argv()`` with
``environment()``. Every flag is spelled by the worker's own option table
(``worker_options.SERVE``), so the platform never writes one. The report
token travels in the environment only, never on a command line that ``ps``
shows.

``parse_launch`` reads the command line back the way the worker does (flag
by flag, through the same fields), and refuses what the worker would.

Compatibility: images built earlier run the worker of their day, and an
unknown flag stops it (exit 2). A new option is sent only when it differs
from the worker's default, or the schema name changes with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from inference_worker.contracts.batching import BATCHING, BatchingConfig
from inference_worker.contracts.errors import ContractError
from inference_worker.contracts.worker_options import ENV_PREFIX, GRPC_PORT, HOST, HTTP_PORT, SERVE

SCHEMA = "kiln.worker-launch/v1"
COMMAND = "serve"


@dataclass(frozen=True)
class LaunchSpec:
    """The ``serve`` options the platform sets; the rest keep the worker's defaults."""

    model_name: str
    model_version: str
    model_sha256: str
    batching: BatchingConfig
    report_url: str
    report_interval_s: float
    worker_id: str
    report_token: str = field(default="", repr=False)
    model_path: str = ""
    device: str = "cpu"
    host: str = HOST.default
    http_port: int = HTTP_PORT.default
    grpc_port: int = GRPC_PORT.default
    warmup_inputs: str = ""
    """``contracts.warmup``'s text: the shapes the version's conversion validated."""
    class_labels: str = ""
    """``contracts.labels``' text: the version's class labels."""

    def __post_init__(self) -> None:
        for name, value in self._own().items():
            object.__setattr__(self, name, SERVE[name].check(value))

    def _own(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in SERVE}

    def options(self) -> dict[str, Any]:
        """Every option's value by name, batching included, in the table's order."""
        given = {**self._own(), **self.batching.values()}
        return {name: given[name] for name in SERVE if name in given}

    def argv(self) -> list[str]:
        """``serve`` and one ``--flag value`` pair per option (secrets and empty values left out)."""
        args = [COMMAND]
        for name, value in self.options().items():
            option = SERVE[name]
            text = option.to_text(value)
            if not option.secret and text != "":
                args += [option.flag, text]
        return args

    def environment(self, *names: str) -> dict[str, str]:
        """The secrets as the worker's variables, and the options ``names`` (a health check reads them)."""
        values = self.options()
        return {
            SERVE[name].env(ENV_PREFIX): SERVE[name].to_text(value)
            for name, value in values.items()
            if (SERVE[name].secret and value) or name in names
        }


def parse_launch(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> LaunchSpec:
    """The spec a command line (and the secrets' variables in ``environ``) carries."""
    if not argv or argv[0] != COMMAND:
        raise ContractError("argv", f"must start with {COMMAND!r}")
    pairs = list(argv[1:])
    if len(pairs) % 2:
        raise ContractError("argv", "expected --flag value pairs")
    names = {SERVE[name].flag: name for name in SERVE}
    values: dict[str, Any] = {}
    for flag, text in zip(pairs[::2], pairs[1::2], strict=True):
        name = names.get(flag)
        if name is None or SERVE[name].secret:
            raise ContractError(flag, "is not a flag of a launch spec")
        try:
            values[name] = SERVE[name].check(SERVE[name].from_text(text))
        except ValueError as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError(name, f"invalid value {text!r}") from None
    for name in SERVE:
        secret = (environ or {}).get(SERVE[name].env(ENV_PREFIX))
        if SERVE[name].secret and secret is not None:
            values[name] = secret
    batching = BatchingConfig(**{name: values.pop(name) for name in BATCHING if name in values})
    accepted = {f.name for f in fields(LaunchSpec)}
    for name in values:
        if name not in accepted:
            raise ContractError(name, "is not part of a launch spec")
    for f in fields(LaunchSpec):
        if f.name not in values and f.name in SERVE and f.default is MISSING:
            raise ContractError(f.name, "is required")
    return LaunchSpec(batching=batching, **values)
