from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from appliance.core.env import env_str
from appliance.core.node_door import node_get
from appliance.nodes.inventory.base import InventoryError, open_inventory
from appliance.nodes.mig.boot import LayoutError, restore


class Command(BaseCommand):
    help = ("At boot, before the node agent: read the MIG layout the control plane declares for this node "
            "(GET /api/v1/node-self/ with the node's own credential; the last one read when the control plane "
            "cannot be reached) and restore it through NVML.")  # fmt: skip

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--control-plane", default=env_str("CONTROL_PLANE_URL", ""), help="https://host of the control plane")
        parser.add_argument("--credential-file", type=Path, default=env_str("NODE_CREDENTIAL_FILE", "") or None)
        parser.add_argument("--ca-file", default=env_str("CA_FILE", ""), help="the control plane's CA (PEM)")
        parser.add_argument("--inventory", choices=["simulated", "nvml"], default=env_str("NODE_INVENTORY", "nvml"))
        parser.add_argument("--simulated-state", type=Path, default=None, help="state file of --inventory simulated")

    def handle(self, *args: Any, **options: Any) -> None:
        cache = Path(settings.VAR_DIR) / "mig-layout.json"
        try:
            layouts = self._fetch(options)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(layouts))
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise CommandError(f"the control plane answered {exc.code} for the node's layout") from exc
            raise CommandError(f"the control plane refuses this node: {json.loads(exc.read()).get('detail')}") from exc
        except (OSError, urllib.error.URLError, ValueError) as exc:
            if not cache.exists():
                raise CommandError(f"cannot read the declared layout ({exc}) and none was read before") from exc
            self.stderr.write(f"control plane unreachable ({exc}); restoring the layout last read")
            layouts = json.loads(cache.read_text())
        declared = {int(i): [(p["profile"], int(p["start"])) for p in placements] for i, placements in layouts.items()}
        options_for = {"state_path": options["simulated_state"]} if options["inventory"] == "simulated" else {}
        try:
            for line in restore(open_inventory(options["inventory"], **options_for), declared):
                self.stdout.write(line)
        except (LayoutError, InventoryError) as exc:
            raise CommandError(str(exc)) from exc

    @staticmethod
    def _fetch(options: dict[str, Any]) -> dict[str, Any]:
        if not options["control_plane"] or options["credential_file"] is None:
            raise ValueError("APPLIANCE_CONTROL_PLANE_URL and APPLIANCE_NODE_CREDENTIAL_FILE are needed")
        body = node_get(options["control_plane"], "/api/v1/node-self/", ca_file=options["ca_file"], timeout=15,
                        credential=options["credential_file"].read_text().strip())  # fmt: skip
        return dict(json.loads(body)["mig_layouts"])
