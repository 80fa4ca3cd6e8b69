from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.audit.chain import verify
from appliance.audit.checkpoints import verify_checkpoint
from appliance.audit.models import AuditCheckpoint, AuditEvent


class Command(BaseCommand):
    help = (
        "Verify the audit hash chain (and every signed checkpoint). Exits 0 when intact; "
        "otherwise prints the first broken event and exits 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="first", type=int, default=None, help="first sequence number to check")
        parser.add_argument("--to", dest="last", type=int, default=None, help="last sequence number to check")
        parser.add_argument(
            "--checkpoint", type=Path, default=None, help="a checkpoint exported earlier (JSON) that the trail must match"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verdict = verify(first=options["first"], last=options["last"])
        if not verdict.ok:
            raise CommandError(verdict.describe(), returncode=1)
        if options["checkpoint"] is not None:
            self._check_external(options["checkpoint"])
        self.stdout.write(verdict.describe())

    def _check_external(self, path: Path) -> None:
        data = json.loads(path.read_text())
        kept = AuditCheckpoint(
            sequence=data["sequence"], event_hash=data["event_hash"], key_id=data["key_id"],
            public_key=data["public_key"], signature=data["signature"],
        )  # fmt: skip
        from django.utils.dateparse import parse_datetime

        created = parse_datetime(data["created"])
        if created is None:
            raise CommandError(f"the kept checkpoint's time is unreadable: {data['created']!r}", returncode=1)
        kept.created = created
        problem = verify_checkpoint(kept)
        if problem:
            raise CommandError(f"the kept checkpoint is not genuine: {problem}", returncode=1)
        event = AuditEvent.objects.filter(sequence=kept.sequence).first()
        if event is None:
            raise CommandError(f"audit trail BROKEN at event #{kept.sequence}: missing, but the kept checkpoint vouches for it", returncode=1)
        if event.hash != kept.event_hash:
            raise CommandError(f"audit trail BROKEN at event #{kept.sequence} ({event.id}): differs from the kept checkpoint", returncode=1)
