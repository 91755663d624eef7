"""Playwright driving Debian's chromium (never a downloaded browser), with screenshots as artifacts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


class Shots:
    """Numbered screenshots of one test under test-artifacts/screenshots/<test>/."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.dir = ARTIFACTS / re.sub(r"[^a-z0-9_]+", "-", name.lower())
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.png"):
            old.unlink()
        self.count = 0

    def __call__(self, step: str) -> Path:
        self.count += 1
        path = self.dir / f"{self.count:02d}-{re.sub(r'[^a-z0-9]+', '-', step.lower())}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def log_in(page: Any, base: str, username: str, password: str) -> None:
    """Log in with the keyboard only, as a screen-reader user would."""
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    page.wait_for_load_state()
