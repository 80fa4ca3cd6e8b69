from __future__ import annotations

from django.db.models import QuerySet

from appliance.rollouts.choices import RESIDENT_REPLICA_STATES, ReplicaState
from appliance.rollouts.models import Replica


def resident_replicas(*, node_id: object, model_id: object | None = None, mig_uuid: str | None = "") -> QuerySet[Replica]:
    """Replicas whose version must be present in one of the node's Tritons (loading or
    live): the main one (mig_uuid ''), one MIG device's, or all of them (None)."""
    qs = Replica.objects.filter(node_id=node_id, state__in=RESIDENT_REPLICA_STATES)
    if mig_uuid is not None:
        qs = qs.filter(mig_uuid=mig_uuid)
    if model_id is not None:
        qs = qs.filter(deployment__version__model_id=model_id)
    return qs.select_related("deployment__version__model")


def live_replicas() -> QuerySet[Replica]:
    return Replica.objects.filter(state=ReplicaState.LIVE).select_related("deployment__version__model", "node")
