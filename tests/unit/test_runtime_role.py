"""The role the appliance runs as cannot change or unprotect the audit trail."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command


@pytest.fixture
def runtime_role(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    db = settings.DATABASES["default"]
    role = f"appliance_test_{uuid.uuid4().hex[:8]}"
    with django_db_blocker.unblock():
        call_command("db_runtime_role", role, stdout=io.StringIO())
        yield role
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"], autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def _as(role: str) -> psycopg.Connection[Any]:
    db = settings.DATABASES["default"]
    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=role, dbname=db["NAME"], autocommit=True)


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("UPDATE audit_auditevent SET actor = 'x'", "permission denied"),
        ("DELETE FROM audit_auditevent", "permission denied"),
        ("TRUNCATE audit_auditevent", "permission denied"),
        ("ALTER TABLE audit_auditevent DISABLE TRIGGER ALL", "must be owner"),
        ("SET session_replication_role = replica", "permission denied"),
        ("DROP TRIGGER audit_event_append_only ON audit_auditevent", "must be owner"),
        ("SELECT set_config('appliance.audit_prune_upto', '999999', false); DELETE FROM audit_auditevent",
         "permission denied"),
        ("DELETE FROM audit_auditprune", "permission denied"),
    ],
)
def test_runtime_role_cannot_touch_the_trail(runtime_role: str, statement: str, error: str) -> None:
    with _as(runtime_role) as conn, pytest.raises(psycopg.Error, match=error):
        conn.execute(statement)


def test_runtime_role_can_do_its_work(runtime_role: str) -> None:
    with _as(runtime_role) as conn:
        conn.execute("SELECT count(*) FROM audit_auditevent").fetchone()
        conn.execute("SELECT count(*) FROM accounts_tenant").fetchone()
        conn.execute("SELECT pg_advisory_xact_lock(1)")
        with conn.transaction():
            conn.execute("INSERT INTO accounts_tenant (id, slug, name, classification, allowed_zones, priority_class, "
                         "rate_limit_rps, rate_burst, daily_quota, created) VALUES (gen_random_uuid(), 'role-test', 'x', "
                         "'internal', '[]', 'standard', 0, 0, 0, now())")  # fmt: skip
            conn.execute("DELETE FROM accounts_tenant WHERE slug = 'role-test'")


def test_superuser_roles_are_refused(django_db_setup: None, django_db_blocker: Any) -> None:
    from django.core.management import CommandError

    with django_db_blocker.unblock(), pytest.raises(CommandError, match="superuser"):
        call_command("db_runtime_role", settings.DATABASES["default"]["USER"], stdout=io.StringIO())
