from django.db import models


class AdminState(models.TextChoices):
    """What the operator wants of the node."""

    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining (no new requests)"
    MAINTENANCE = "maintenance", "Maintenance"
    # Its credential was revoked: nothing is routed or placed there until it enrols again.
    REVOKED = "revoked", "Revoked (credential withdrawn)"


class Health(models.TextChoices):
    """What the health checks found (a check that cannot run is a failure)."""

    UNKNOWN = "unknown", "Not checked yet"
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    UNHEALTHY = "unhealthy", "Unhealthy"


# The gateway sends new requests only to active nodes in these health states.
ROUTABLE_HEALTH = (Health.HEALTHY, Health.DEGRADED)


class ReconfigurationState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (previous layout restored)"


ACTIVE_RECONFIGURATION_STATES = (ReconfigurationState.PENDING, ReconfigurationState.RUNNING)

# The steps of a MIG reconfiguration, in order (appliance/nodes/reconfigure.py).
RECONFIGURATION_STEPS = (
    "preflight", "drain", "wait_inflight", "unload", "mig_mode", "repartition", "start_tritons", "reload", "verify",
    "undrain",
)  # fmt: skip
