from django.db import models


class Strategy(models.TextChoices):
    ALL_AT_ONCE = "all_at_once", "All at once"
    BLUE_GREEN = "blue_green", "Blue-green"
    CANARY = "canary", "Canary"


class DeploymentState(models.TextChoices):
    PENDING = "pending", "Pending"
    ROLLING_OUT = "rolling_out", "Loading replicas"
    PROGRESSING = "progressing", "Shifting traffic under gates"
    LIVE = "live", "Live"
    FAILED = "failed", "Failed (rolled back)"
    ROLLED_BACK = "rolled_back", "Rolled back"
    SUPERSEDED = "superseded", "Superseded by a newer deployment"


# A rollout under way: at most one per model.
ACTIVE_DEPLOYMENT_STATES = (DeploymentState.PENDING, DeploymentState.ROLLING_OUT, DeploymentState.PROGRESSING)
ENDED_DEPLOYMENT_STATES = (DeploymentState.FAILED, DeploymentState.ROLLED_BACK, DeploymentState.SUPERSEDED)


class ReplicaState(models.TextChoices):
    PENDING = "pending", "Pending"
    LOADING = "loading", "Loading"
    LIVE = "live", "Live"
    PARKED = "parked", "Unloaded while idle (loads on the next request)"
    FAILED = "failed", "Failed"
    RETIRED = "retired", "Retired"


# Replicas whose version must stay in the node's Triton model repository.
RESIDENT_REPLICA_STATES = (ReplicaState.LOADING, ReplicaState.LIVE)
