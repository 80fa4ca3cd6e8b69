from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Administrator"
    OPERATOR = "operator", "Operator"
    AUDITOR = "auditor", "Auditor (read-only, sees everything)"
    TENANT_ADMIN = "tenant_admin", "Tenant administrator (own tenant only)"


class PriorityClass(models.TextChoices):
    """A tenant's place in the gateway's queue; the Triton priority level it maps to."""

    CRITICAL = "critical", "Critical (last to be shed)"
    STANDARD = "standard", "Standard"
    BATCH = "batch", "Batch (first to be shed)"


# Triton priority levels (1 is the highest) for models whose profile has at least three.
PRIORITY_LEVEL: dict[str, int] = {PriorityClass.CRITICAL: 1, PriorityClass.STANDARD: 2, PriorityClass.BATCH: 3}
