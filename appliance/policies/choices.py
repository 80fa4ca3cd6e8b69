from django.db import models


class Classification(models.TextChoices):
    """How sensitive a tenant's data is, least to most."""

    PUBLIC = "public", "Public"
    INTERNAL = "internal", "Internal"
    CONFIDENTIAL = "confidential", "Confidential"
    RESTRICTED = "restricted", "Restricted"


class Operation(models.TextChoices):
    PROCESS = "process", "Process (run inference)"
    CACHE = "cache", "Cache responses"
    LOG = "log", "Log request metadata"


class Effect(models.TextChoices):
    ALLOW = "allow", "Allow"
    DENY = "deny", "Deny"


# With no rule matching, these classes are allowed everywhere and the others nowhere.
ALLOWED_BY_DEFAULT = frozenset({Classification.PUBLIC, Classification.INTERNAL})
