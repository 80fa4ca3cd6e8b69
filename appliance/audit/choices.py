from django.db import models


class Origin(models.TextChoices):
    WEB = "web", "Web console"
    API = "api", "REST API"
    CLI = "cli", "Command line"
    TASK = "task", "Celery task"
    GRPC = "grpc", "gRPC gateway"
    AGENT = "agent", "Node agent"
    SYSTEM = "system", "System"


class Action(models.TextChoices):
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"
