"""Settings come from the environment through typed helpers that reject bad values."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import env
from tests.support.paths import ROOT


def test_bad_values_are_rejected_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_X", "twelve")
    with pytest.raises(ImproperlyConfigured, match="KILN_X='twelve' is not an integer"):
        env.env_int("KILN_X", 1)
    monkeypatch.setenv("KILN_X", "maybe")
    with pytest.raises(ImproperlyConfigured, match="not a boolean"):
        env.env_bool("KILN_X", default=False)
    monkeypatch.setenv("KILN_X", "-5")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env.env_int("KILN_X", 1, minimum=0)
    monkeypatch.setenv("KILN_X", "nan")
    with pytest.raises(ImproperlyConfigured, match="not a number"):
        env.env_float("KILN_X", 1.0)


def test_a_value_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("KILN_SECRET", "from-env")
    monkeypatch.setenv("KILN_SECRET_FILE", str(secret))

    assert env.env_str("KILN_SECRET", "default") == "from-a-file"


def test_database_urls_are_parsed(tmp_path: Path) -> None:
    pg = env.database_from_url("postgres://u:p%40ss@db.local:5433/kiln", base_dir=tmp_path)
    lite = env.database_from_url("sqlite:///var/db.sqlite3", base_dir=tmp_path)
    absolute = env.database_from_url("sqlite:////srv/kiln.db", base_dir=tmp_path)

    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "kiln",
        "u",
        "p@ss",
        "db.local",
        "5433",
    )
    assert lite["NAME"] == str(tmp_path / "var/db.sqlite3")
    assert absolute["NAME"] == "/srv/kiln.db"
    with pytest.raises(ImproperlyConfigured, match="scheme must be"):
        env.database_from_url("mysql://x/y", base_dir=tmp_path)


def test_settings_refuse_to_load_without_a_secret_key_when_debug_is_off() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "false"},
    )

    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off" in result.stderr


def test_the_platform_module_is_still_the_standard_library() -> None:
    platform = importlib.import_module("platform")

    assert platform.__file__ is not None
    assert "site-packages" not in platform.__file__
    assert Path(platform.__file__).parent != ROOT
    assert callable(platform.python_version)


def test_the_default_instance_id_follows_the_database_not_its_credentials() -> None:
    """Two platforms on one host (a second checkout's `make run`, a staging stack) must not take each
    other's workers for orphans: without KILN_INSTANCE_ID, the id comes from the database."""
    first = env.instance_id_for("postgres://kiln:secret@db.internal:5432/kiln")
    assert first == env.instance_id_for("postgres://other:password@db.internal:5432/kiln")
    assert first.startswith("kiln-")
    assert "secret" not in first
    others = {
        env.instance_id_for("postgres://kiln:secret@db.internal:5432/kiln_staging"),
        env.instance_id_for("postgres://kiln:secret@db2.internal:5432/kiln"),
        env.instance_id_for("postgres://kiln:secret@db.internal:5433/kiln"),
        env.instance_id_for("sqlite:////srv/kiln/var/db.sqlite3"),
        env.instance_id_for("sqlite:////home/me/kiln/var/db.sqlite3"),
    }
    assert len(others) == 5
    assert first not in others

    def instance_of(extra: dict[str, str]) -> str:
        environ = {k: v for k, v in os.environ.items() if k != "KILN_INSTANCE_ID"}
        code = "from django.conf import settings; print(settings.KILN_INSTANCE_ID)"
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**environ, "DJANGO_SETTINGS_MODULE": "config.settings", **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    url = "postgres://postgres@127.0.0.1:5432/kiln_elsewhere"
    assert instance_of({"DATABASE_URL": url}) == env.instance_id_for(url)
    assert instance_of({"DATABASE_URL": url, "KILN_INSTANCE_ID": "edge-1"}) == "edge-1"
