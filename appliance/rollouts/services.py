"""The rollout state machine: every transition of a deployment or replica is here.

Tasks (rollouts/tasks.py) only orchestrate: they claim work with conditional
updates and call these functions. Each transition saves an Audited row, so each
one leaves an audit event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import ModelVersion
from appliance.core.errors import ConflictError, DomainError
from appliance.nodes.models import MigDevice, Node
from appliance.rollouts.choices import ACTIVE_DEPLOYMENT_STATES, DeploymentState, ReplicaState
from appliance.rollouts.models import Deployment, Replica


class RolloutError(DomainError):
    """A rollout cannot start as asked."""


class RolloutBusy(ConflictError):
    """Another rollout of the same model is under way."""


def deployment_create(
    *, version: ModelVersion, nodes: Sequence[Node] = (), mig_devices: Sequence[MigDevice] = ()
) -> Deployment:
    """Records the deployment and its replicas (on nodes' main Tritons and/or on MIG
    devices); the rollout task starts after commit. Refused when the residency
    policy forbids a node for a tenant the model serves."""
    if not nodes and not mig_devices:
        raise RolloutError("a deployment needs at least one node or MIG device")
    for device in mig_devices:
        if not device.grpc_address:
            raise RolloutError(f"MIG device {device.uuid} has no running Triton yet")
    targets = {n.pk: n for n in [*nodes, *(d.gpu.node for d in mig_devices)]}
    placement_check(model_id=version.model_id, nodes=list(targets.values()), subject=f"deployment of {version}")
    return _deployment_create(version=version, nodes=nodes, mig_devices=mig_devices)


def placement_check(*, model_id: object, nodes: Sequence[Node], subject: str) -> None:
    """Every tenant granted the model must be allowed to have its data processed on
    every node; the first refusal is audited and raised with the rule that decided."""
    from appliance.accounts.models import Tenant
    from appliance.policies.choices import Operation
    from appliance.policies.engine import check, current_rules
    from appliance.policies.services import PolicyDenied, policy_denial_record

    rules = current_rules()
    for tenant in Tenant.objects.filter(grants__model_id=model_id).order_by("slug"):
        for node in sorted(nodes, key=lambda n: n.name):
            decision = check(tenant=tenant, node=node, operation=Operation.PROCESS, rules=rules)
            if not decision.allowed:
                policy_denial_record(decision=decision, operation=Operation.PROCESS, tenant=tenant.slug,
                                     place=node.name, subject=subject)  # fmt: skip
                raise PolicyDenied(f"placement refused: {decision.explain()}")


@transaction.atomic
def _deployment_create(*, version: ModelVersion, nodes: Sequence[Node], mig_devices: Sequence[MigDevice]) -> Deployment:
    if version.format == ArtifactFormat.ENSEMBLE:
        raise RolloutError("ensemble versions are deployed with their composing models (not supported yet)")
    # Lock the model's row so that two concurrent requests cannot both start a rollout.
    type(version.model).objects.select_for_update().get(pk=version.model_id)
    busy = Deployment.objects.filter(version__model_id=version.model_id, state__in=ACTIVE_DEPLOYMENT_STATES).first()
    if busy is not None:
        raise RolloutBusy(f"a rollout of model '{version.model.name}' is already in progress ({busy.pk})")
    deployment = Deployment.objects.create(version=version)
    for node in sorted(set(nodes), key=lambda n: n.name):
        Replica.objects.create(deployment=deployment, node=node)
    for device in mig_devices:
        Replica.objects.create(deployment=deployment, node=device.gpu.node, mig_uuid=device.uuid)

    from appliance.rollouts.tasks import rollout_start

    deployment_id = str(deployment.pk)
    transaction.on_commit(lambda: rollout_start.apply_async(args=[deployment_id], task_id=deployment_id))
    return deployment


def deployment_claim(*, deployment_id: str) -> Deployment | None:
    """PENDING → ROLLING_OUT, or the deployment if it is already rolling out (a
    re-delivered task); None when there is nothing left to do."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
        if deployment is None or deployment.state not in ACTIVE_DEPLOYMENT_STATES:
            return None
        if deployment.state == DeploymentState.PENDING:
            deployment.state = DeploymentState.ROLLING_OUT
            deployment.save(update_fields=["state", "updated"])
        return deployment


def replica_claim(*, replica_id: str) -> Replica | None:
    """PENDING/LOADING → LOADING with one more attempt. A node consumes its queue
    with one worker, so a LOADING replica seen here is a re-delivery after the
    agent died mid-load, and the idempotent load is simply done again."""
    with transaction.atomic():
        replica = (
            Replica.objects.select_for_update()
            .select_related("deployment__version__model", "node")
            .filter(pk=replica_id)
            .first()
        )
        if replica is None or replica.state not in (ReplicaState.PENDING, ReplicaState.LOADING):
            return None
        replica.state = ReplicaState.LOADING
        replica.attempts += 1
        replica.save(update_fields=["state", "attempts", "updated"])
        return replica


@transaction.atomic
def replica_mark_live(*, replica: Replica) -> list[Replica]:
    """The replica serves; older live replicas of the same model on the node retire.
    Returns the retired replicas."""
    locked = Replica.objects.select_for_update().get(pk=replica.pk)
    if locked.state != ReplicaState.LOADING:
        return []
    locked.state = ReplicaState.LIVE
    locked.error = ""
    locked.save(update_fields=["state", "error", "updated"])
    retired = list(
        Replica.objects.select_for_update()
        .filter(
            node_id=locked.node_id,
            mig_uuid=locked.mig_uuid,
            deployment__version__model_id=replica.deployment.version.model_id,
            state=ReplicaState.LIVE,
        )
        .exclude(pk=locked.pk)
    )
    for old in retired:
        old.state = ReplicaState.RETIRED
        old.save(update_fields=["state", "updated"])
    deployment_sync(deployment_id=locked.deployment_id)
    for deployment_id in {old.deployment_id for old in retired}:
        deployment_sync(deployment_id=deployment_id)
    return retired


@transaction.atomic
def replica_mark_failed(*, replica: Replica, error: str) -> None:
    locked = Replica.objects.select_for_update().get(pk=replica.pk)
    if locked.state in (ReplicaState.PENDING, ReplicaState.LOADING):
        locked.state = ReplicaState.FAILED
        locked.error = error[:4000]
        locked.save(update_fields=["state", "error", "updated"])
    deployment_sync(deployment_id=locked.deployment_id)


@transaction.atomic
def deployment_sync(*, deployment_id: object) -> Deployment:
    """Derives the deployment's state from its replicas."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
    states = list(deployment.replicas.values_list("state", flat=True))
    new_state = deployment.state
    if deployment.state in ACTIVE_DEPLOYMENT_STATES:
        if states and all(s == ReplicaState.LIVE for s in states):
            new_state = DeploymentState.LIVE
        elif ReplicaState.FAILED in states and not {ReplicaState.PENDING, ReplicaState.LOADING} & set(states):
            new_state = DeploymentState.FAILED
            errors = deployment.replicas.filter(state=ReplicaState.FAILED).select_related("node")
            deployment.error = "; ".join(f"{r.node.name}: {r.error}" for r in errors)[:4000]
    elif deployment.state == DeploymentState.LIVE and states and all(s == ReplicaState.RETIRED for s in states):
        new_state = DeploymentState.SUPERSEDED
    if new_state != deployment.state:
        deployment.state = new_state
        deployment.save(update_fields=["state", "error", "updated"])
    return deployment
