"""Console login: password, plus a TOTP code for accounts that enrolled one
(required for administrators when APPLIANCE_REQUIRE_ADMIN_TOTP is on)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from appliance.accounts.choices import Role
from appliance.accounts.models import TotpDevice
from appliance.accounts.roles import role_of
from appliance.accounts.services import totp_verify


class TotpAuthenticationForm(AdminAuthenticationForm):
    otp = forms.CharField(
        label="One-time code", required=False, max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
        help_text="From your authenticator app, if your account uses one.",
    )  # fmt: skip

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        _check_totp(self, user)


def _check_totp(form: Any, user: Any) -> None:
    """Accounts that enrolled a device must give a fresh code; admins must enrol when required."""
    enrolled = TotpDevice.objects.filter(user=user, confirmed=True).exists()
    if not enrolled:
        if settings.REQUIRE_ADMIN_TOTP and role_of(user) == Role.ADMIN:
            raise forms.ValidationError(
                "Administrators must enrol a one-time-code device first (manage.py totp_enroll).", code="totp_required"
            )
        return
    if not totp_verify(user=user, code=form.cleaned_data.get("otp") or ""):
        raise forms.ValidationError("The one-time code is missing, wrong or already used.", code="totp_invalid")


class ConsoleAuthenticationForm(AuthenticationForm):
    """The operator console's login: any account with an appliance role (not only
    Django staff), with the same one-time-code rule as the admin."""

    otp = TotpAuthenticationForm.base_fields["otp"]

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if role_of(user) is None:
            raise forms.ValidationError("This account has no role in the appliance.", code="no_role")
        _check_totp(self, user)
