"""Rollout orchestration. rollout_start runs on the control queue; the replica
tasks run inside node agents, on the queue named after their node."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from appliance.nodes.agent import sync
from appliance.nodes.agent.runtime import require_local
from appliance.nodes.agent.smoke import SmokeError, smoke_infer
from appliance.nodes.queues import node_queue
from appliance.rollouts import services
from appliance.rollouts.choices import ReplicaState

log = logging.getLogger(__name__)


@shared_task(name="rollouts.rollout_start")
def rollout_start(deployment_id: str) -> None:
    deployment = services.deployment_claim(deployment_id=deployment_id)
    if deployment is None:
        return
    for replica in deployment.replicas.filter(state=ReplicaState.PENDING).select_related("node"):
        replica_apply.apply_async(args=[str(replica.pk)], task_id=str(replica.pk), queue=node_queue(replica.node.name))


@shared_task(name="rollouts.rollout_advance")
def rollout_advance(deployment_id: str) -> str:
    """Judge one rollout now (sent after every replica event)."""
    from appliance.rollouts.progress import advance

    return advance(deployment_id)


@shared_task(name="rollouts.tick")
def rollout_tick() -> dict[str, str]:
    """Every rollout in progress one step further; idle models scaled to zero (beat)."""
    from appliance.rollouts.progress import tick

    return tick()


@shared_task(name="rollouts.replica_apply")
def replica_apply(replica_id: str) -> None:
    """Materialise, configure, load, wait for READY, smoke-test, go live.
    Safe to run twice; a failure leaves the versions already serving untouched."""
    local = require_local()
    replica = services.replica_claim(replica_id=replica_id)
    if replica is None:
        return
    if str(replica.node_id) != local.node_id:
        services.replica_mark_failed(replica=replica, error=f"task reached node {local.name}, not {replica.node.name}")
        return
    version = replica.deployment.version
    model = version.model
    where = replica.mig_uuid
    try:
        wanted = sync.resident_versions(local, model_id=model.pk, mig_uuid=where)
        sync.load_model(local, model_name=model.name, versions=wanted, mig_uuid=where)
        smoke_infer(local.endpoint(where).client(), version, timeout=30.0)
    except LookupError as exc:
        services.replica_mark_failed(replica=replica, error=str(exc))
        return
    except (sync.LoadError, SmokeError, OSError, ValueError) as exc:
        log.warning("replica %s of %s failed: %s", replica_id, version, exc)
        # Put the files and config back to what serves; Triton itself kept serving it.
        keep = [v for v in wanted if v.pk != version.pk]
        sync.write_model(local, model_name=model.name, versions=keep, mig_uuid=where)
        if not keep:
            sync.load_model(local, model_name=model.name, versions=[], mig_uuid=where)
        services.replica_mark_failed(replica=replica, error=str(exc))
        return
    if not services.replica_mark_live(replica=replica):
        # Rolled back while this replica loaded: converge to what should be resident.
        node_model_sync.apply_async(args=[str(model.pk), where], queue=node_queue(local.name))


@shared_task(name="rollouts.node_model_sync")
def node_model_sync(model_id: str, mig_uuid: str = "") -> None:
    """Converge one of this node's Tritons to the model's resident versions (drops retired
    and parked ones). A version that left the resident set less than the grace period ago
    is kept until the gateways have seen it leave: the task comes back then."""
    local = require_local()
    grace = settings.RETIRE_GRACE_S
    if sync.recently_released(local, model_id=model_id, mig_uuid=mig_uuid, within_s=grace):
        node_model_sync.apply_async(args=[model_id, mig_uuid], queue=node_queue(local.name), countdown=grace)
        return
    versions = sync.resident_versions(local, model_id=model_id, mig_uuid=mig_uuid)
    from appliance.catalog.models import Model

    model = Model.objects.get(pk=model_id)
    sync.load_model(local, model_name=model.name, versions=versions, mig_uuid=mig_uuid)
