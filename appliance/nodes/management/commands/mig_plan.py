from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from appliance.nodes.mig.catalog import GPU_MODELS
from appliance.nodes.mig.planner import plan


class Command(BaseCommand):
    help = (
        "Plan a MIG layout for one GPU: prints one line per instance as <profile>@<start> and exits 0, "
        "or prints why the layout is impossible and exits 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--gpu-model", required=True, choices=list(GPU_MODELS))
        parser.add_argument("profiles", nargs="+", help="profile names, e.g. 3g.40gb 2g.20gb 1g.10gb")

    def handle(self, *args: Any, **options: Any) -> None:
        result = plan(GPU_MODELS[options["gpu_model"]], options["profiles"])
        if not result.ok:
            self.stdout.write(result.reason)
            sys.exit(1)
        for placement in result.placements:
            self.stdout.write(str(placement))
