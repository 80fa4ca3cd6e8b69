from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Administrator"
    OPERATOR = "operator", "Operator"
    AUDITOR = "auditor", "Auditor (read-only, sees everything)"
    TENANT_ADMIN = "tenant_admin", "Tenant administrator (own tenant only)"
