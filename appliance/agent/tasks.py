"""The tasks that run inside a node agent, from the queue named after its node. The
control plane sends them by name through appliance/nodes/dispatch.py; each takes ids,
re-reads what it needs through appliance/agent/control.py and is safe to run twice. The
control plane answers only for this node's own replicas (a task for another node's is refused)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from appliance.agent import control, sync
from appliance.agent.runtime import require_local
from appliance.agent.smoke import SmokeError, smoke_infer

log = logging.getLogger(__name__)


@shared_task(name=control.TASK_REPLICA_APPLY)
def replica_apply(replica_id: str) -> None:
    """Materialise, configure, load, wait for READY, smoke-test, go live.
    Safe to run twice; a failure leaves the versions already serving untouched."""
    local = require_local()
    replica = control.replica_claim(replica_id=replica_id)
    if replica is None:
        return
    version = replica.version
    model = version.model
    where = replica.mig_uuid
    try:
        wanted = control.resident_versions(model_id=model.pk, mig_uuid=where)
        sync.load_model(local, model_name=model.name, versions=wanted, mig_uuid=where)
        smoke_infer(local.endpoint(where).client(), version, timeout=30.0)
    except LookupError as exc:
        control.replica_mark_failed(replica=replica, error=str(exc))
        return
    except (sync.LoadError, SmokeError, OSError, ValueError) as exc:
        log.warning("replica %s of %s failed: %s", replica_id, version, exc)
        # Put the files and config back to what serves; Triton itself kept serving it.
        keep = [v for v in wanted if v.pk != version.pk]
        sync.write_model(local, model_name=model.name, versions=keep, mig_uuid=where)
        if not keep:
            sync.load_model(local, model_name=model.name, versions=[], mig_uuid=where)
        control.replica_mark_failed(replica=replica, error=str(exc))
        return
    if not control.replica_mark_live(replica=replica):
        # Rolled back while this replica loaded: converge to what should be resident.
        control.sync_model_later(model_id=model.pk, mig_uuid=where)


@shared_task(name=control.TASK_MODEL_SYNC)
def node_model_sync(model_id: str, mig_uuid: str = "") -> None:
    """Converge one of this node's Tritons to the model's resident versions (drops retired
    and parked ones). A version that left the resident set less than the grace period ago
    is kept until the gateways have seen it leave: the task comes back then."""
    local = require_local()
    grace = settings.RETIRE_GRACE_S
    if control.recently_released(model_id=model_id, mig_uuid=mig_uuid, within_s=grace):
        control.sync_model_later(model_id=model_id, mig_uuid=mig_uuid, countdown=grace)
        return
    versions = control.resident_versions(model_id=model_id, mig_uuid=mig_uuid)
    sync.load_model(local, model_name=control.model_name(model_id=model_id), versions=versions, mig_uuid=mig_uuid)


@shared_task(name=control.TASK_RECONFIGURE)
def reconfigure(reconfiguration_id: str) -> None:
    """The steps of a MIG reconfiguration (appliance/agent/reconfigure.py)."""
    from appliance.agent.reconfigure import run_reconfiguration

    run_reconfiguration(require_local(), reconfiguration_id)
