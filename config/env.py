"""Typed helpers that read settings from the environment.

Every helper rejects a malformed value with ``ImproperlyConfigured`` naming the
variable, and every helper honours ``NAME_FILE``: when it is set, the value is
read from that file (Docker/Kubernetes secrets) instead of ``NAME``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"{name}_FILE={file_name!r} cannot be read: {exc.strerror}"
            raise ImproperlyConfigured(msg) from exc
    return os.environ.get(name)


def env_str(name: str, default: str) -> str:
    """A string; the default when unset."""
    value = _raw(name)
    return default if value is None else value


def env_optional_str(name: str) -> str | None:
    """A string, or None when unset or empty."""
    value = _raw(name)
    return value or None


def env_bool(name: str, default: bool) -> bool:
    """One of 1/0, true/false, yes/no, on/off (any case)."""
    value = _raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    msg = f"{name}={value!r} is not a boolean (use true or false)"
    raise ImproperlyConfigured(msg)


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer, optionally bounded."""
    value = _raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        msg = f"{name}={value!r} is not an integer"
        raise ImproperlyConfigured(msg) from None
    _check_bounds(name, number, minimum, maximum)
    return number


def env_float(
    name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    """A float, optionally bounded."""
    value = _raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value.strip())
    except ValueError:
        msg = f"{name}={value!r} is not a number"
        raise ImproperlyConfigured(msg) from None
    if number != number:  # NaN
        msg = f"{name}={value!r} is not a number"
        raise ImproperlyConfigured(msg)
    _check_bounds(name, number, minimum, maximum)
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; empty items are dropped."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_int_list(
    name: str, default: list[int], *, minimum: int | None = None, maximum: int | None = None
) -> list[int]:
    """A comma-separated list of integers, each bounded, in the order given, repeats dropped."""
    numbers: list[int] = []
    for item in env_list(name, [str(n) for n in default]):
        try:
            number = int(item)
        except ValueError:
            msg = f"{name}: {item!r} is not an integer"
            raise ImproperlyConfigured(msg) from None
        _check_bounds(name, number, minimum, maximum)
        if number not in numbers:
            numbers.append(number)
    if not numbers:
        msg = f"{name} must name at least one integer"
        raise ImproperlyConfigured(msg)
    return numbers


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of a fixed set of strings."""
    value = env_str(name, default).strip()
    if value not in choices:
        msg = f"{name}={value!r} must be one of {', '.join(choices)}"
        raise ImproperlyConfigured(msg)
    return value


def env_size(name: str, default: str) -> str:
    """A memory size as Docker writes it (``512m``, ``4g``, bytes without a unit), lowercased; empty: none."""
    value = env_str(name, default).strip().lower()
    if value and not re.fullmatch(r"[1-9][0-9]*[bkmg]?", value):
        msg = f"{name}={value!r}: use a size such as 512m or 4g (empty: none)"
        raise ImproperlyConfigured(msg)
    return value


def env_path(name: str, default: Path) -> Path:
    """A filesystem path, made absolute."""
    value = _raw(name)
    return (Path(value) if value else default).expanduser().resolve()


def instance_id_for(database_url: str) -> str:
    """The default platform instance id: ``kiln-`` and a digest of the database it keeps its rows in
    (scheme, host, port and name, no credentials). Two platforms on one host, Docker engine or Redis
    never take each other's workers, counters or routing table for their own, and one platform
    keeps its id across restarts."""
    parts = urlsplit(database_url)
    where = f"{parts.scheme}|{parts.hostname or ''}|{parts.port or ''}|{unquote(parts.path)}"
    return f"kiln-{hashlib.sha256(where.encode()).hexdigest()[:10]}"


def database_from_url(url: str, *, base_dir: Path) -> dict[str, object]:
    """Turn ``postgres://user:pass@host:port/name`` or ``sqlite:///path`` into Django's dict."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative/to/base.db  or  sqlite:////absolute/path.db
        path = Path(unquote(parts.path)[1:] or "db.sqlite3")
        if not path.is_absolute():
            path = base_dir / path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            msg = f"DATABASE_URL={url!r} names no database"
            raise ImproperlyConfigured(msg)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    msg = f"DATABASE_URL={url!r}: scheme must be postgres:// or sqlite://"
    raise ImproperlyConfigured(msg)


def _check_bounds(name: str, number: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and number < minimum:
        msg = f"{name}={number} is below the minimum {minimum}"
        raise ImproperlyConfigured(msg)
    if maximum is not None and number > maximum:
        msg = f"{name}={number} is above the maximum {maximum}"
        raise ImproperlyConfigured(msg)
