"""Node tasks leave from one place (appliance/nodes/dispatch.py): on the node's own queue, with
the tracking row's id as task id, under names the agent registers. Read back from the real
broker (RabbitMQ), as the node's agent would receive them."""

from __future__ import annotations

import uuid

from appliance.nodes import dispatch
from tests.broker import received


def test_node_tasks_go_to_the_nodes_queue_with_the_row_id_under_names_the_agent_registers() -> None:
    from appliance.celery import app

    node = f"dispatch-{uuid.uuid4().hex[:8]}"
    replica, run, model = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    dispatch.replica_apply(node_name=node, replica_id=replica)
    dispatch.reconfigure(node_name=node, reconfiguration_id=run)
    dispatch.model_sync(node_name=node, model_id=model, mig_uuid="MIG-1", countdown=5)
    assert dispatch.node_queue(node).endswith(f".node.{node}")
    sent = {headers["task"]: (headers, body) for headers, body in received(dispatch.node_queue(node), 3)}
    assert set(sent) == {"agent.replica_apply", "agent.reconfigure", "agent.node_model_sync"}
    app.loader.import_default_modules()  # what a worker registers: every installed app's tasks
    assert set(sent) <= set(app.tasks), "the agent registers every task the control plane sends"
    assert sent["agent.replica_apply"][0]["id"] == str(replica) and sent["agent.replica_apply"][1][0] == [str(replica)]
    assert sent["agent.reconfigure"][0]["id"] == str(run) and sent["agent.reconfigure"][1][0] == [str(run)]
    sync_headers, sync_body = sent["agent.node_model_sync"]
    assert sync_body[0] == [str(model), "MIG-1"] and sync_headers["eta"], "a delayed convergence carries its time"
