from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

# Tables the running appliance may only read and append to.
APPEND_ONLY_TABLES = ("audit_auditevent", "audit_auditcheckpoint", "audit_auditprune")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Command(BaseCommand):
    help = (
        "Run as the database owner after every migrate: create (if needed) the unprivileged role the running "
        "appliance connects as, and grant it exactly what it needs. It can read and write the domain tables, only "
        "SELECT and INSERT the audit trail (plus filling an event's chain link once), and, being neither owner nor superuser, cannot disable the audit triggers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", help="name of the runtime role, e.g. appliance_app")
        parser.add_argument("--password-file", default=None, help="set the role's password from this file")

    def handle(self, *args: Any, **options: Any) -> None:
        role = options["role"]
        if not _IDENT.match(role):
            raise CommandError(f"{role!r} is not a plain lower-case SQL identifier")
        if connection.vendor != "postgresql":
            raise CommandError("runtime roles exist on PostgreSQL only")
        database = connection.settings_dict["NAME"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
            row = cursor.fetchone()
            if row is None:
                cursor.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION')
            elif row[0]:
                raise CommandError(f"role {role} is a superuser; the runtime role must not be one")
            if options["password_file"]:
                with open(options["password_file"]) as fh:
                    cursor.execute(f'ALTER ROLE "{role}" PASSWORD %s', [fh.read().strip()])
            cursor.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
            cursor.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
            cursor.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
            cursor.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
            tables = ", ".join(APPEND_ONLY_TABLES)
            cursor.execute(f'REVOKE UPDATE, DELETE, TRUNCATE ON {tables} FROM "{role}"')
            # Linking an event into the chain fills these once; the trigger refuses any other change.
            cursor.execute(f'GRANT UPDATE (sequence, prev_hash, hash) ON audit_auditevent TO "{role}"')
        self.stdout.write(f"role {role}: granted on {database}; audit tables are SELECT/INSERT only (and linking)")
