"""Optional TOTP for console logins (required for admins when configured)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from appliance.accounts import totp
from appliance.accounts.models import TotpDevice
from appliance.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # "12345678901234567890"


@pytest.mark.parametrize(("unix", "code"), [(59, "287082"), (1111111109, "081804"), (2000000000, "279037")])
def test_rfc6238_vectors(unix: int, code: str) -> None:
    assert totp.code_at(RFC_SECRET, unix // 30) == code
    assert totp.matching_step(RFC_SECRET, code, now=unix) == unix // 30
    assert totp.matching_step(RFC_SECRET, code, now=unix + 300) is None


@pytest.fixture
def ada(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("ada", "", "ada-admin-password-1")


def _login(code: str = "") -> int:
    response = Client().post("/admin/login/?next=/admin/", {"username": "ada", "password": "ada-admin-password-1", "otp": code})
    return response.status_code  # 302 = logged in, 200 = form shown again with errors


def test_enrolled_admin_needs_a_fresh_code(ada: Any) -> None:
    uri = io.StringIO()
    call_command("totp_enroll", "ada", stdout=uri)
    assert uri.getvalue().startswith("otpauth://totp/")
    secret = TotpDevice.objects.get(user=ada).secret
    assert _login() == 302, "an unconfirmed device does not lock the account out"
    call_command("totp_enroll", "ada", "--confirm", totp.code_at(secret, totp.current_step()), stdout=io.StringIO())
    assert _login() == 200
    # The confirming code was spent; the next step's code is valid (one step of drift allowed).
    fresh = totp.code_at(secret, totp.current_step() + 1)
    assert _login(fresh) == 302
    assert _login(fresh) == 200, "a code is accepted once"
    event = AuditEvent.objects.filter(action="totp_device.create").get()
    assert event.changes["secret"] == [None, "[redacted]"]


@override_settings(REQUIRE_ADMIN_TOTP=True)
def test_admins_without_a_device_are_refused_when_required(ada: Any) -> None:
    assert _login() == 200
