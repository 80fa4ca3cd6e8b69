"""The one place that sends work to node agents: the queue (the node's own, which its
agent consumes with one worker), the task id (the tracking row's where there is one:
a Replica, a Reconfiguration) and the names of the tasks the agents register
(appliance/agent/tasks.py). Tasks are sent by name, so the control plane never imports
the agent's code.

Callers that write a tracking row send after their transaction commits
(`transaction.on_commit`), so an agent never looks for a row that is not there yet."""

from __future__ import annotations

from django.conf import settings

REPLICA_APPLY = "agent.replica_apply"
MODEL_SYNC = "agent.node_model_sync"
RECONFIGURE = "agent.reconfigure"


def node_queue(node_name: str) -> str:
    return f"{settings.INSTANCE}.node.{node_name}"


def _send(name: str, node_name: str, args: list[str], *, task_id: str | None = None, countdown: float | None = None) -> None:
    from appliance.celery import app

    app.send_task(name, args=args, queue=node_queue(node_name), task_id=task_id, countdown=countdown)


def replica_apply(*, node_name: str, replica_id: object) -> None:
    """Load a replica's version into its node's Triton (again: the task is idempotent)."""
    _send(REPLICA_APPLY, node_name, [str(replica_id)], task_id=str(replica_id))


def model_sync(*, node_name: str, model_id: object, mig_uuid: str = "", countdown: float | None = None) -> None:
    """Converge one of the node's Tritons to the model's resident versions (after `countdown` s)."""
    _send(MODEL_SYNC, node_name, [str(model_id), mig_uuid], countdown=countdown)


def reconfigure(*, node_name: str, reconfiguration_id: object) -> None:
    """Run a MIG reconfiguration's steps on the node."""
    _send(RECONFIGURE, node_name, [str(reconfiguration_id)], task_id=str(reconfiguration_id))
