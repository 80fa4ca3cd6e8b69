from __future__ import annotations

from celery import shared_task

from appliance.audit.chain import link_pending
from appliance.audit.checkpoints import checkpoint_create


@shared_task(name="audit.checkpoint")
def audit_checkpoint() -> None:
    """Periodic (Celery beat): sign the chain head."""
    checkpoint_create()


@shared_task(name="audit.link")
def audit_link() -> int:
    """Periodic (Celery beat): link events whose writer died between its commit and linking
    them (every writer links its own right after committing; this is the safety net)."""
    return link_pending()
