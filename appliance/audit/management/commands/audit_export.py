from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.audit.export import FORMATS, export_lines
from appliance.audit.selectors import audit_events
from appliance.core.errors import DomainError


class Command(BaseCommand):
    help = "Export the audit trail (or a filtered part of it) as JSON lines or CSV."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=FORMATS, default="jsonl")
        parser.add_argument("--out", type=Path, default=None, help="file to write (standard output by default)")
        for name in ("since", "until", "actor", "action", "origin", "target_id", "correlation_id"):
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        filters = {k: v for k, v in options.items() if k in {"since", "until", "actor", "action", "origin", "target_id", "correlation_id"} and v}
        try:
            events = audit_events(filters).order_by("sequence").iterator(chunk_size=2000)
        except DomainError as exc:
            raise CommandError(str(exc)) from exc
        out = options["out"].open("w", encoding="utf-8", newline="") if options["out"] else sys.stdout
        try:
            for line in export_lines(events, options["format"]):
                out.write(line)
        finally:
            if options["out"]:
                out.close()
