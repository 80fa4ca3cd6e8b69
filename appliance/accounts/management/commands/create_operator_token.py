from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.accounts.roles import role_of
from appliance.accounts.services import operator_token_create
from appliance.audit.choices import Origin
from appliance.audit.context import audit_context


class Command(BaseCommand):
    help = "Create a REST API token for an operator account; the token is printed once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no operator account named {options['username']!r}")
        if role_of(user) is None:
            raise CommandError(f"{options['username']!r} has no appliance role (create it with create_account)")
        with audit_context(origin=Origin.CLI, actor=f"cli:{os.environ.get('USER', 'root')}"):
            _, token = operator_token_create(user=user, name=options["name"])
        self.stdout.write(token)
