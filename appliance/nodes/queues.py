"""Names of the Celery queues. Each node agent consumes the queue named after its node."""

from django.conf import settings


def node_queue(node_name: str) -> str:
    return f"{settings.INSTANCE}.node.{node_name}"


def control_queue() -> str:
    return str(settings.CELERY_TASK_DEFAULT_QUEUE)
