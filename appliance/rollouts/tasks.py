"""Rollout orchestration on the control queue. The replica tasks it starts run inside the
node agents (appliance/agent/tasks.py), sent through appliance/nodes/dispatch.py."""

from __future__ import annotations

from celery import shared_task

from appliance.nodes import dispatch
from appliance.rollouts import services
from appliance.rollouts.choices import ReplicaState


@shared_task(name="rollouts.rollout_start")
def rollout_start(deployment_id: str) -> None:
    deployment = services.deployment_claim(deployment_id=deployment_id)
    if deployment is None:
        return
    for replica in deployment.replicas.filter(state=ReplicaState.PENDING).select_related("node"):
        dispatch.replica_apply(node_name=replica.node.name, replica_id=replica.pk)


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
