from django.db import models


class AdminState(models.TextChoices):
    """What the operator wants of the node."""

    ACTIVE = "active", "Active"
    DRAINING = "draining", "Draining (no new requests)"
    MAINTENANCE = "maintenance", "Maintenance"


class Health(models.TextChoices):
    """What the health checks found (a check that cannot run is a failure)."""

    UNKNOWN = "unknown", "Not checked yet"
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    UNHEALTHY = "unhealthy", "Unhealthy"


# The gateway sends new requests only to active nodes in these health states.
ROUTABLE_HEALTH = (Health.HEALTHY, Health.DEGRADED)
