from __future__ import annotations

from celery import shared_task

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.provisioning.services import TASK_RUN


@shared_task(name=TASK_RUN)
def run(run_id: str) -> str:
    """One provisioning run (provisioning/runner.py), claimed first: a redelivered task finds it taken."""
    from appliance.provisioning import runner, services

    with audit_context(origin=Origin.TASK, actor="provisioner"):
        claimed = services.run_claim(run_id=run_id)
        if claimed is None:
            return "not pending"
        return runner.execute(claimed).state


@shared_task(name="provisioning.drift_check")
def drift_check() -> str:
    """The schedule's drift check (APPLIANCE_DRIFT_CHECK_S)."""
    from appliance.provisioning import services

    with audit_context(origin=Origin.TASK, actor="schedule"):
        started = services.drift_check_due()
    return "started" if started else "skipped"
