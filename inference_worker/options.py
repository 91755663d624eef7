"""Command-line options of both programs (``serve`` and ``gateway``): flags, variables, defaults.

Each option is a field of an option table (``contracts.options``); here it
becomes a flag and an environment variable named ``<prefix>`` + the field's
name in upper case (``--max-batch-size`` -> ``KILN_WORKER_MAX_BATCH_SIZE``).
A flag beats the variable, the variable beats the field's default. A secret
option may also come from a file named by ``<variable>_FILE`` (container
secrets). Text that spells no value raises ``ConfigError`` naming the flag and
the variable; a value out of bounds is the configuration's to refuse (``config``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_worker.config import ConfigError
from inference_worker.contracts.options import Kind, OptionField, number_text


@dataclass(frozen=True)
class CommandOption:
    """One field of a table as a flag of one program."""

    field: OptionField[Any]
    prefix: str

    @property
    def flag(self) -> str:
        return self.field.flag

    @property
    def env(self) -> str:
        return self.field.env(self.prefix)

    @property
    def dest(self) -> str:
        return self.field.name


def command_options(table: Iterable[OptionField[Any]], prefix: str) -> tuple[CommandOption, ...]:
    """The table's fields as flags whose variables start with ``prefix``."""
    return tuple(CommandOption(field, prefix) for field in table)


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[CommandOption]) -> None:
    """One flag per option, its default and variable in the help."""
    for option in options:
        default = option.field.default
        text = number_text(default) if option.field.kind is Kind.FLOAT else option.field.to_text(default)
        shown = "" if default is None else f" [default: {text or 'none'}]"
        help_text = f"{option.field.help}{shown} (env {option.env})"
        parser.add_argument(option.flag, dest=option.dest, help=help_text)


class Values:
    """The options' values by name, read as attributes (``values.max_batch_size``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def pick(self, names: Iterable[str]) -> dict[str, Any]:
        """The values of ``names`` (the keyword arguments of a config built from a table)."""
        return {name: self._values[name] for name in names}


def read_options(
    args: argparse.Namespace, options: Iterable[CommandOption], environ: Mapping[str, str] | None = None
) -> Values:
    """Every option's value: the flag, else the variable (or its file, for a secret), else the default."""
    environ = os.environ if environ is None else environ
    options = tuple(options)
    values: dict[str, Any] = {}
    for option in options:
        text = getattr(args, option.dest, None)
        if text is None:
            text = environ.get(option.env)
        if text is None and option.field.secret:
            text = _read_secret(environ, option.env + "_FILE")
        if text is None:
            values[option.dest] = option.field.default
            continue
        try:
            values[option.dest] = option.field.from_text(text)
        except (ValueError, TypeError):
            raise ConfigError(f"{option.flag} (or {option.env}): invalid value {text!r}") from None
    for option in options:
        if option.field.required and values[option.dest] is None:
            raise ConfigError(f"{option.flag} (or {option.env}) is required")
    return Values(values)


def _read_secret(environ: Mapping[str, str], variable: str) -> str | None:
    path = environ.get(variable)
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc.strerror}") from None
