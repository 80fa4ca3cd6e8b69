"""A provisioning run through ansible-runner, on the control worker: a private data directory
per run (its artifacts kept for the operator), the playbook from the release's ansible/, the
site's inventory and variables (APPLIANCE_ANSIBLE_INVENTORY, APPLIANCE_ANSIBLE_EXTRA_VARS),
the run's correlation id passed as `appliance_correlation_id`, every event stored as it comes
(the console shows them live), the recap kept at the end."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from appliance.provisioning import services
from appliance.provisioning.models import ProvisioningRun

log = logging.getLogger(__name__)
_COUNTED = ("ok", "changed", "failures", "dark", "skipped")


def execute(run: ProvisioningRun) -> ProvisioningRun:
    import ansible_runner  # type: ignore[import-untyped]  # the control worker's dependency only

    data_dir = Path(settings.VAR_DIR) / "provisioning" / str(run.pk)
    data_dir.mkdir(parents=True, exist_ok=True)
    cmdline = [*(["-e", f"@{run.extra_vars}"] if run.extra_vars else []),
               *(["--check", "--diff"] if run.check_mode else [])]  # fmt: skip

    def on_event(event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        result = data.get("res") or {}
        services.run_event(run=run, counter=int(event.get("counter", 0)), event=str(event.get("event", "")),
                           host=str(data.get("host", "")), task=str(data.get("task", "")),
                           changed=bool(result.get("changed")) if isinstance(result, dict) else False,
                           time=timezone.now())  # fmt: skip
        return True

    try:
        result = ansible_runner.run(
            private_data_dir=str(data_dir), project_dir=str(settings.ANSIBLE_DIR), playbook=run.playbook,
            inventory=run.inventory, limit=run.limit or None,
            extravars={"appliance_correlation_id": run.correlation_id}, cmdline=" ".join(cmdline) or None,
            event_handler=on_event, quiet=True,
            # The toolchain's ansible-playbook first on the PATH (ansible-runner's `binary` would run it raw).
            envvars={"ANSIBLE_CONFIG": str(Path(settings.ANSIBLE_DIR) / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                     "PATH": f"{Path(settings.ANSIBLE_PLAYBOOK).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        )  # fmt: skip
    except Exception as exc:  # the runner could not start the play at all
        log.exception("provisioning run %s could not start", run.pk)
        return services.run_finish(run_id=str(run.pk), rc=None, recap={}, log="", error=f"{type(exc).__name__}: {exc}")
    stats = result.stats or {}
    recap = {host: {key: int((stats.get(key) or {}).get(host, 0)) for key in _COUNTED}
             for host in sorted({h for key in _COUNTED for h in (stats.get(key) or {})})}  # fmt: skip
    output = result.stdout.read() if result.stdout else ""
    error = "" if result.rc == 0 else f"ansible-playbook ended with {result.rc} ({result.status})"
    return services.run_finish(run_id=str(run.pk), rc=result.rc, recap=recap, log=output, error=error)
