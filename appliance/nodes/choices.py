from django.db import models


class NodeState(models.TextChoices):
    PENDING = "pending", "Registered, agent not seen yet"
    READY = "ready", "Ready"
    NOT_READY = "not_ready", "Triton not ready"
    DRAINING = "draining", "Draining"
    MAINTENANCE = "maintenance", "Maintenance"


# States in which the gateway may send a node new requests.
ROUTABLE_STATES = (NodeState.READY,)
