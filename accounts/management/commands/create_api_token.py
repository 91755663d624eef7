"""``manage.py create_api_token USERNAME``: print a new API token once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.tokens import create_api_token


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (it is stored only as a digest)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label for the token")
        parser.add_argument("--ttl-days", type=int, default=None, help="expire after N days")

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        try:
            user = user_model.objects.get(username=options["username"])
        except user_model.DoesNotExist:
            raise CommandError(f"no user named {options['username']!r}") from None
        self.stdout.write(create_api_token(user=user, name=options["name"], ttl_days=options["ttl_days"]))
