"""Management commands write audit rows with origin 'cli', secrets redacted."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest
from django.core.management import call_command

from appliance.accounts.models import OperatorToken
from appliance.accounts.secrets import hash_secret
from appliance.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_bootstrap_admin_writes_private_credentials_and_audits(tmp_path: Path) -> None:
    credentials = tmp_path / "run" / "admin-credentials"
    out = io.StringIO()
    call_command("bootstrap_admin", "--credentials", str(credentials), stdout=out)
    token = json.loads(out.getvalue())["token"]
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    password = credentials.read_text().split("password: ")[1].strip()
    assert password not in json.dumps(list(AuditEvent.objects.values("changes")))
    assert OperatorToken.objects.get(key_hash=hash_secret(token)).user.is_superuser
    created = AuditEvent.objects.get(action="user.create")
    assert created.origin == "cli" and created.changes["password"] == [None, "[redacted]"]
    assert AuditEvent.objects.filter(action="operator_token.create", origin="cli").count() == 1

    # A second run keeps the password file and replaces the launcher token.
    call_command("bootstrap_admin", "--credentials", str(credentials), stdout=io.StringIO())
    assert credentials.read_text().split("password: ")[1].strip() == password
    assert OperatorToken.objects.filter(name="launcher").count() == 1
    assert AuditEvent.objects.filter(action="operator_token.delete", origin="cli").count() == 1
