"""Retention by time that keeps the trail verifiable.

Events older than the cutoff are deleted up to a boundary event S; first a signed
checkpoint of S is made and an AuditPrune row records S and its hash, so the
kept chain (S+1 onwards) is verified against a signed anchor, and checkpoints
made before keep their signatures. The trigger lets a DELETE through only for
events at or below S, only in a transaction that set `appliance.audit_prune_upto`,
and only a role with DELETE on the table (the owner, never the runtime role) can
issue it. The prune itself is the next audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from appliance.audit.chain import _lock, link_pending
from appliance.audit.checkpoints import checkpoint_create
from appliance.audit.models import AuditEvent, AuditPrune
from appliance.audit.services import audit_record
from appliance.core.errors import DomainError


@dataclass(frozen=True)
class PruneResult:
    upto_sequence: int
    deleted: int


def audit_prune(*, before: datetime) -> PruneResult | None:
    """Deletes the events written before `before`; None when there are none."""
    if connection.vendor != "postgresql":
        raise DomainError("audit retention runs on PostgreSQL only")
    with transaction.atomic():
        _lock()
        link_pending()  # under the lock held to the end: the chain cannot move meanwhile
        linked = AuditEvent.objects.filter(sequence__isnull=False).order_by("-sequence")
        upto = linked.filter(time__lt=before).values_list("sequence", "hash").first()
        if upto is None:
            return None
        sequence, anchor = upto
        assert sequence is not None  # filtered to linked events
        head = linked.values_list("sequence", flat=True).first()
        if sequence == head:
            raise DomainError("retention must keep at least the newest event; choose an earlier cutoff")
        checkpoint_create(sequence=sequence)
        AuditPrune.objects.create(upto_sequence=sequence, anchor_hash=anchor, cutoff=before)
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('appliance.audit_prune_upto', %s, true)", [str(sequence)])
            cursor.execute("DELETE FROM audit_auditevent WHERE sequence <= %s", [sequence])
            deleted = cursor.rowcount
            cursor.execute("SELECT set_config('appliance.audit_prune_upto', '', true)")
        audit_record(action="audit.prune", target_type="audit", target_repr=f"events up to #{sequence}",
                     changes={"upto_sequence": sequence, "cutoff": before.isoformat(), "deleted": deleted})  # fmt: skip
        link_pending()
    return PruneResult(sequence, deleted)
