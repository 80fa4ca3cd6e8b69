"""Writing audit rows. Every writer in the appliance goes through audit_record."""

from __future__ import annotations

from typing import Any

from appliance.audit.chain import append
from appliance.audit.context import current
from appliance.audit.models import AuditEvent


def audit_record(
    *,
    action: str,
    target_type: str = "",
    target_id: str = "",
    target_repr: str = "",
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    ctx = current()
    return append(
        actor=ctx.resolved_actor()[:200],
        origin=ctx.origin,
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_repr=target_repr[:200],
        changes=changes or {},
        source_address=ctx.source_address[:100],
        correlation_id=ctx.correlation_id[:64],
    )
