from __future__ import annotations

from celery import shared_task

from appliance.audit.checkpoints import checkpoint_create


@shared_task(name="audit.checkpoint")
def audit_checkpoint() -> None:
    """Periodic (Celery beat): sign the chain head."""
    checkpoint_create()
