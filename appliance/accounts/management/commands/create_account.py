from __future__ import annotations

import os
import secrets
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.accounts.choices import Role
from appliance.accounts.models import Tenant
from appliance.accounts.services import account_create
from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.core.errors import DomainError


class Command(BaseCommand):
    help = "Create an operator account with a role; prints its password and an API token once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--tenant", default=None, help="tenant slug (tenant_admin only)")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant {options['tenant']!r}")
        password = secrets.token_urlsafe(18)
        with audit_context(origin=Origin.CLI, actor=f"cli:{os.environ.get('USER', 'root')}"):
            try:
                _, token = account_create(username=options["username"], password=password, role=options["role"], tenant=tenant)
            except DomainError as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(f"username: {options['username']}\npassword: {password}\napi token: {token}\n")
