from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.audit.retention import audit_prune
from appliance.core.errors import DomainError


class Command(BaseCommand):
    help = (
        "Retention: delete audit events older than --before (ISO time) or --older-than-days N, keeping the rest "
        "verifiable (a signed checkpoint anchors the kept chain). Run as the database owner, not the runtime role."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--before", default=None)
        group.add_argument("--older-than-days", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["before"]:
            before = parse_datetime(options["before"])
            if before is None or before.tzinfo is None:
                raise CommandError("--before needs an ISO 8601 time with a time zone, e.g. 2026-01-01T00:00:00Z")
        else:
            before = timezone.now() - timedelta(days=options["older_than_days"])
        with audit_context(origin=Origin.CLI, actor=f"cli:{os.environ.get('USER', 'root')}"):
            try:
                result = audit_prune(before=before)
            except DomainError as exc:
                raise CommandError(str(exc)) from exc
            except DatabaseError as exc:
                raise CommandError(f"the database refused the prune (run it as the table owner): {exc}") from exc
        if result is None:
            self.stdout.write("nothing older than the cutoff")
        else:
            self.stdout.write(f"deleted {result.deleted} events up to #{result.upto_sequence}; the chain stays verifiable")
