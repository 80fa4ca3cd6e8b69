from django.db import models


class RunKind(models.TextChoices):
    """What a provisioning run is for; each runs one playbook of ansible/."""

    ADD_NODE = "add_node", "Add a node (node.yml)"
    REPROVISION = "reprovision", "Re-provision (node.yml)"
    DRIFT_CHECK = "drift_check", "Drift check (node.yml --check --diff)"


class RunState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


ACTIVE_RUN_STATES = (RunState.PENDING, RunState.RUNNING)
PLAYBOOKS = {RunKind.ADD_NODE: "node.yml", RunKind.REPROVISION: "node.yml", RunKind.DRIFT_CHECK: "node.yml"}
