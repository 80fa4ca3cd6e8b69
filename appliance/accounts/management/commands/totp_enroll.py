from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.accounts import totp
from appliance.accounts.services import totp_enroll, totp_verify
from appliance.audit.choices import Origin
from appliance.audit.context import audit_context


class Command(BaseCommand):
    help = "Enrol a TOTP device for an account (prints the otpauth URI once), or confirm it with --confirm CODE."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--confirm", metavar="CODE", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no account {options['username']!r}")
        with audit_context(origin=Origin.CLI, actor=f"cli:{os.environ.get('USER', 'root')}"):
            if options["confirm"]:
                if not totp_verify(user=user, code=options["confirm"], confirm=True):
                    raise CommandError("that code does not match (or was used already)")
                self.stdout.write("confirmed: console logins now ask for a one-time code")
                return
            device = totp_enroll(user=user)
        self.stdout.write(totp.provisioning_uri(device.secret, user.get_username()))
