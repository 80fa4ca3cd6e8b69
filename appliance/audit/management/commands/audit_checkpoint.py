from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand

from appliance.audit.checkpoints import checkpoint_create, checkpoint_export


class Command(BaseCommand):
    help = "Sign the current head of the audit chain and print the checkpoint as JSON (keep a copy off the box)."

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint = checkpoint_create()
        self.stdout.write(json.dumps(checkpoint_export(checkpoint) if checkpoint else None, indent=2))
