"""Production settings pass Django's deployment checks; the console sends a CSP."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | env
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True)


def test_check_deploy_passes_with_production_settings(tmp_path: Path) -> None:
    secret = tmp_path / "secret-key"
    secret.write_text(secrets.token_urlsafe(64))
    result = _manage(
        "check", "--deploy", "--fail-level", "WARNING",
        APPLIANCE_PRODUCTION="true", APPLIANCE_SECRET_KEY_FILE=str(secret), APPLIANCE_ALLOWED_HOSTS="appliance.bank.internal",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key() -> None:
    result = _manage("check", APPLIANCE_PRODUCTION="true")
    assert result.returncode != 0
    assert "APPLIANCE_SECRET_KEY" in result.stderr


@pytest.mark.django_db
def test_every_response_carries_a_content_security_policy(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/admin/login/")
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response["X-Frame-Options"] == "DENY"
