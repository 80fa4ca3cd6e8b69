"""A database of its own for a benchmark: created empty, migrated, Django set up
against it, and dropped at the end whatever happens (PostgreSQL on 127.0.0.1)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database(name: str = "appliance_bench") -> Iterator[None]:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    os.environ["APPLIANCE_DB_URL"] = f"postgresql://postgres@127.0.0.1:5432/{name}"
    os.environ.setdefault("APPLIANCE_VAR_DIR", str(ROOT / "var" / "bench"))
    os.environ.setdefault("APPLIANCE_ARTIFACT_ROOT", str(ROOT / "var" / "bench" / "artifacts"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "appliance.settings"
    import django

    django.setup()
    from django.core.management import call_command

    try:
        call_command("migrate", verbosity=0)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
