"""Writes for provisioning runs: created by people (console, API) or the drift schedule,
claimed and finished by the control worker that runs them (provisioning/runner.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from appliance.audit.context import current
from appliance.core.errors import ConflictError, DomainError
from appliance.provisioning.choices import ACTIVE_RUN_STATES, PLAYBOOKS, RunKind, RunState
from appliance.provisioning.models import ProvisioningEvent, ProvisioningRun

TASK_RUN = "provisioning.run"
LOG_KEEP = 64 * 1024


def run_create(*, kind: str, limit: str = "", requested_by: str = "") -> ProvisioningRun:
    """A run, recorded before anything runs; the control worker picks it up after commit.
    One run at a time per target: a second is refused (409) while the first is under way."""
    if not settings.ANSIBLE_INVENTORY:
        raise DomainError("no inventory is configured (APPLIANCE_ANSIBLE_INVENTORY): the control plane cannot "
                          "run playbooks")  # fmt: skip
    if kind in (RunKind.ADD_NODE, RunKind.REPROVISION) and not limit:
        raise DomainError(f"a {kind} run names the host it provisions")
    with transaction.atomic():
        busy = ProvisioningRun.objects.select_for_update().filter(state__in=ACTIVE_RUN_STATES, limit=limit).first()
        if busy is not None:
            raise ConflictError(f"a provisioning run for {limit or 'all nodes'} is already {busy.state} ({busy.pk})")
        run = ProvisioningRun.objects.create(
            kind=kind, playbook=PLAYBOOKS[RunKind(kind)], limit=limit, check_mode=kind == RunKind.DRIFT_CHECK,
            inventory=settings.ANSIBLE_INVENTORY, extra_vars=settings.ANSIBLE_EXTRA_VARS,
            requested_by=requested_by, correlation_id=current().correlation_id,
        )  # fmt: skip
        transaction.on_commit(lambda: _send(str(run.pk)))
    return run


def _send(run_id: str) -> None:
    from appliance.celery import app

    app.send_task(TASK_RUN, args=[run_id], queue=settings.CELERY_TASK_DEFAULT_QUEUE, task_id=run_id)


def run_claim(*, run_id: str) -> ProvisioningRun | None:
    with transaction.atomic():
        run = ProvisioningRun.objects.select_for_update().filter(pk=run_id, state=RunState.PENDING).first()
        if run is None:
            return None
        run.state, run.started = RunState.RUNNING, timezone.now()
        run.save()
    return run


def run_event(*, run: ProvisioningRun, counter: int, event: str, host: str, task: str, changed: bool,
              time: datetime) -> None:  # fmt: skip
    ProvisioningEvent.objects.get_or_create(run=run, counter=counter, defaults={
        "event": event[:64], "host": host[:255], "task": task[:500], "changed": changed, "time": time})  # fmt: skip


def run_finish(*, run_id: str, rc: int | None, recap: dict[str, dict[str, int]], log: str, error: str = "") -> ProvisioningRun:
    """The run's end: succeeded when the play ended with no failed or unreachable host. A check
    run records the hosts it would change as drifted."""
    with transaction.atomic():
        run = ProvisioningRun.objects.select_for_update().get(pk=run_id)
        bad = any(counts.get("failures", 0) or counts.get("dark", 0) for counts in recap.values())
        run.state = RunState.SUCCEEDED if rc == 0 and not bad and not error else RunState.FAILED
        run.rc, run.recap, run.error = rc, recap, error
        run.drifted = sorted(h for h, counts in recap.items() if counts.get("changed", 0)) if run.check_mode else []
        run.log = log[-LOG_KEEP:]
        run.finished = timezone.now()
        run.save()
    return run


def drift_check_due() -> ProvisioningRun | None:
    """The schedule's drift check over every node, unless one is already under way."""
    if not settings.ANSIBLE_INVENTORY:
        return None
    try:
        return run_create(kind=RunKind.DRIFT_CHECK, requested_by="schedule")
    except ConflictError:
        return None


def latest_drift() -> dict[str, Any]:
    """The last finished drift check: when, and which hosts differ from the playbook."""
    run = ProvisioningRun.objects.filter(kind=RunKind.DRIFT_CHECK, state__in=[RunState.SUCCEEDED, RunState.FAILED]).first()
    return {"run": run, "drifted": run.drifted if run else []}
