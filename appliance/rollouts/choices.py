from django.db import models


class DeploymentState(models.TextChoices):
    PENDING = "pending", "Pending"
    ROLLING_OUT = "rolling_out", "Rolling out"
    LIVE = "live", "Live"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded by a newer deployment"


ACTIVE_DEPLOYMENT_STATES = (DeploymentState.PENDING, DeploymentState.ROLLING_OUT)


class ReplicaState(models.TextChoices):
    PENDING = "pending", "Pending"
    LOADING = "loading", "Loading"
    LIVE = "live", "Live"
    FAILED = "failed", "Failed"
    RETIRED = "retired", "Retired"


# Replicas whose version must stay in the node's Triton model repository.
RESIDENT_REPLICA_STATES = (ReplicaState.LOADING, ReplicaState.LIVE)
