from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from appliance.accounts.models import OperatorToken
from appliance.accounts.services import operator_token_create
from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.audit.mixins import REDACTED
from appliance.audit.services import audit_record


class Command(BaseCommand):
    help = (
        "Make sure an admin operator exists; its password is written (0600) to --credentials on first creation. "
        "Prints a fresh operator API token named --token-name as JSON (earlier tokens of that name are deleted)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--credentials", type=Path, required=True)
        parser.add_argument("--token-name", default="launcher")

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        path: Path = options["credentials"]
        with audit_context(origin=Origin.CLI, actor=f"cli:{os.environ.get('USER', 'root')}"), transaction.atomic():
            user = user_model.objects.filter(username=options["username"]).first()
            if user is None or not path.exists():
                password = secrets.token_urlsafe(18)
                if user is None:
                    user = user_model.objects.create_superuser(options["username"], "", password)
                    action = "user.create"
                else:
                    user.set_password(password)
                    user.save()
                    action = "user.set_password"
                # Django's User is not an Audited model; record the change by hand.
                audit_record(
                    action=action,
                    target_type="user",
                    target_id=str(user.pk),
                    target_repr=user.get_username(),
                    changes={"password": [None, REDACTED], "is_superuser": [None, True]},
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(f"username: {user.get_username()}\npassword: {password}\n")
            for old in OperatorToken.objects.filter(user=user, name=options["token_name"]):
                old.delete()
            _, token = operator_token_create(user=user, name=options["token_name"])
        self.stdout.write(json.dumps({"username": user.get_username(), "token": token}))
