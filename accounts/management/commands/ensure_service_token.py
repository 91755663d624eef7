"""``manage.py ensure_service_token USERNAME --file PATH``: a token for a service (Prometheus) in a file.

Creates the (non-staff) user when missing and writes a new token to PATH (mode 0640: the compose
stack's Prometheus reads it through the platform's group) unless PATH already holds a live token
of that user. Used by the compose stack; safe to run at every start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser

from accounts.tokens import create_api_token, find_api_token


class Command(BaseCommand):
    help = "Write an API token of USERNAME (created if missing) to --file, unless it holds a live one."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--file", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        user, _ = User.objects.get_or_create(username=options["username"], defaults={"is_active": True})
        if path.exists():
            row = find_api_token(path.read_text().strip())
            if row is not None and row.user_id == user.pk:
                self.stdout.write(f"{path} holds a live token of {user.username}")
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        token = create_api_token(user=user, name="service token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        self.stdout.write(f"wrote a new token of {user.username} to {path}")
