from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet

from appliance.nodes.workloads import Workload
from appliance.rollouts.choices import ACTIVE_DEPLOYMENT_STATES, RESIDENT_REPLICA_STATES, DeploymentState, ReplicaState
from appliance.rollouts.models import Deployment, Replica


def resident_replicas(*, node_id: UUID | str, model_id: UUID | str | None = None, mig_uuid: str | None = "") -> QuerySet[Replica]:
    """Replicas whose version must be present in one of the node's Tritons (loading or
    live): the main one (mig_uuid ''), one MIG device's, or all of them (None)."""
    qs = Replica.objects.filter(node_id=node_id, state__in=RESIDENT_REPLICA_STATES)
    if mig_uuid is not None:
        qs = qs.filter(mig_uuid=mig_uuid)
    if model_id is not None:
        qs = qs.filter(deployment__version__model_id=model_id)
    return qs.select_related("deployment__version__model")


def workloads(*, node_id: UUID | str | None = None, mig_uuid: str | None = None, live_only: bool = False) -> list[Workload]:
    """Resident replicas as the nodes app sees them (its health sweep and MIG moves read
    them through appliance/nodes/workloads.py, where apps.py registers this)."""
    qs = Replica.objects.filter(state__in=[ReplicaState.LIVE] if live_only else RESIDENT_REPLICA_STATES)
    if node_id is not None:
        qs = qs.filter(node_id=node_id)
    if mig_uuid is not None:
        qs = qs.filter(mig_uuid=mig_uuid)
    rows = qs.values_list("node_id", "mig_uuid", "deployment__version__model__name", "deployment__version__number", "state")
    return [Workload(node_id=str(node), mig_uuid=mig, model=model, version=number, live=state == ReplicaState.LIVE)
            for node, mig, model, number, state in rows]  # fmt: skip


def live_replicas() -> QuerySet[Replica]:
    return Replica.objects.filter(state=ReplicaState.LIVE).select_related("deployment__version__model", "node")


def traffic_split() -> tuple[dict[str, dict[str, int]], frozenset[str]]:
    """{model: {version: percent}} for models with a rollout in progress (the serving
    deployment gets what the rollout does not), and the models scaled to zero."""
    rows = Deployment.objects.filter(
        state__in=[DeploymentState.LIVE, *ACTIVE_DEPLOYMENT_STATES]
    ).values_list("version__model__name", "version__number", "state", "traffic_percent")
    per_model: dict[str, list[tuple[str, str, int]]] = {}
    for model, number, state, percent in rows:
        per_model.setdefault(model, []).append((str(number), state, percent))
    weights: dict[str, dict[str, int]] = {}
    for model, deployments in per_model.items():
        split: dict[str, int] = {}
        rolling = sum(p for _, s, p in deployments if s != DeploymentState.LIVE)
        for version, state, percent in deployments:
            share = max(0, 100 - rolling) if state == DeploymentState.LIVE else percent
            split[version] = max(split.get(version, 0), share)
        weights[model] = split
    # Scaled to zero, or waking: the serving deployment has replicas parked or loading again.
    parked = frozenset(
        Replica.objects.filter(
            state__in=[ReplicaState.PARKED, ReplicaState.PENDING, ReplicaState.LOADING], deployment__state=DeploymentState.LIVE
        )
        .values_list("deployment__version__model__name", flat=True)
    )
    return weights, parked
