"""The audit trail as a hash chain.

Every event carries the sha256 of a canonical serialisation of its own fields
plus the previous event's hash. A writer only inserts its event, unlinked, inside
its own transaction and takes no lock: a transaction that held the chain's lock
until it committed would deadlock against any other that holds a row it needs
(seen in the end-to-end tests: a replica marked failed against the rollout judge). Right after the
commit, `link_pending` gives every committed unlinked event its place (sequence,
prev_hash, hash) under a PostgreSQL advisory lock, in a short transaction of its
own that touches nothing but those events; so the chain has one order and no
gaps. The database lets the link columns be filled once and nothing else change
(migration 0005). `verify` recomputes the chain; signed checkpoints pin the head
so that a truncated tail is caught too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from appliance.audit.models import AuditCheckpoint, AuditEvent, AuditPrune

GENESIS = "0" * 64
# An arbitrary 63-bit constant naming the audit-append lock.
_LOCK_KEY = 0x4155444954  # "AUDIT"
_CHAINED_FIELDS = (
    "sequence", "id", "time", "actor", "origin", "action", "target_type", "target_id",
    "target_repr", "changes", "source_address", "correlation_id", "prev_hash",
)  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
        return str(value)
    return value


def canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(
        {name: _plain(fields[name]) for name in _CHAINED_FIELDS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


def compute_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def append(**fields: Any) -> AuditEvent:
    """Writes one event inside the caller's transaction, unlinked; it is linked into the
    chain as soon as that transaction commits (at once outside a transaction)."""
    event = AuditEvent(time=timezone.now(), **fields)
    event.save(force_insert=True)
    linker: object = link_pending
    if not any(entry[1] is linker for entry in connection.run_on_commit):  # (savepoints, func, robust)
        # robust: the caller's change is committed whatever happens here; an event left
        # unlinked is linked by the next reader or the periodic task.
        transaction.on_commit(link_pending, robust=True)
    return event


def link_pending(batch: int = 1000) -> int:
    """Links every committed event not yet in the chain, oldest first; returns how many.
    Safe anywhere, any number of times, from any process (the lock serialises linkers)."""
    linked = 0
    while AuditEvent.objects.filter(sequence__isnull=True).exists():
        with transaction.atomic():
            _lock()
            head = AuditEvent.objects.filter(sequence__isnull=False).order_by("-sequence").values_list("sequence", "hash").first()
            sequence, prev_hash = (head[0] or 0, head[1]) if head else (0, GENESIS)
            events = list(AuditEvent.objects.filter(sequence__isnull=True).order_by("time", "id")[:batch])
            if not events:  # another linker was first
                break
            for event in events:
                sequence += 1
                event.sequence, event.prev_hash = sequence, prev_hash
                event.hash = prev_hash = compute_hash({name: getattr(event, name) for name in _CHAINED_FIELDS})
            AuditEvent.objects.bulk_update(events, ["sequence", "prev_hash", "hash"])
        linked += len(events)
    return linked


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    checkpoints: int
    broken_sequence: int | None = None
    broken_id: str = ""
    reason: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"audit trail intact: {self.checked} events, {self.checkpoints} checkpoints verified"
        where = f"event #{self.broken_sequence}" + (f" ({self.broken_id})" if self.broken_id else "")
        return f"audit trail BROKEN at {where}: {self.reason}"


def _events(first: int | None, last: int | None) -> Iterator[AuditEvent]:
    qs = AuditEvent.objects.filter(sequence__isnull=False).order_by("sequence")  # not what was written since
    if first is not None:
        qs = qs.filter(sequence__gte=first)
    if last is not None:
        qs = qs.filter(sequence__lte=last)
    return qs.iterator(chunk_size=2000)


def _retained_start() -> tuple[int, str, str]:
    """(first sequence kept, the hash it must link to, '' or what is wrong with the anchor)."""
    prune = AuditPrune.objects.order_by("-upto_sequence").first()
    if prune is None:
        return 1, GENESIS, ""
    anchor = AuditCheckpoint.objects.filter(sequence=prune.upto_sequence, event_hash=prune.anchor_hash).first()
    if anchor is None:
        return prune.upto_sequence + 1, prune.anchor_hash, (
            f"the retention anchor at #{prune.upto_sequence} has no signed checkpoint"
        )
    return prune.upto_sequence + 1, prune.anchor_hash, ""


def verify(*, first: int | None = None, last: int | None = None) -> Verdict:
    """Recomputes the chain over [first, last] (the whole trail by default; after a
    retention prune, from the first kept event, anchored by a signed checkpoint).
    Committed events not yet linked are linked first."""
    link_pending()
    floor, anchor, problem = _retained_start()
    if problem:
        return Verdict(False, 0, 0, floor - 1, "", problem)
    if first is None or first <= floor:
        first_whole = first is None or first <= floor
        first = floor
    else:
        first_whole = False
    expected_seq = first
    prev_hash: str | None = anchor if first_whole else None
    if not first_whole:
        prev_hash = AuditEvent.objects.filter(sequence=first - 1).values_list("hash", flat=True).first()
    checked = 0
    hashes: dict[int, str] = {}
    for event in _events(first, last):
        if event.sequence != expected_seq:
            return Verdict(False, checked, 0, expected_seq, "",
                           f"missing: events #{expected_seq}..#{(event.sequence or 0) - 1} were deleted")  # fmt: skip
        if prev_hash is not None and event.prev_hash != prev_hash:
            return Verdict(False, checked, 0, event.sequence, str(event.id),
                           "its prev_hash does not match the previous event (reordered or previous changed)")  # fmt: skip
        recomputed = compute_hash({name: getattr(event, name) for name in _CHAINED_FIELDS})
        if recomputed != event.hash:
            return Verdict(False, checked, 0, event.sequence, str(event.id), "its content was changed after it was written")
        prev_hash = event.hash
        hashes[event.sequence] = event.hash
        expected_seq += 1
        checked += 1
    head = expected_seq - 1
    from appliance.audit.checkpoints import verify_checkpoint

    count = 0
    for checkpoint in AuditCheckpoint.objects.all():
        problem = verify_checkpoint(checkpoint)
        if problem:
            return Verdict(False, checked, count, checkpoint.sequence, "", problem)
        if last is None and checkpoint.sequence > head and first_whole:
            return Verdict(False, checked, count, head + 1, "",
                           f"missing: a checkpoint vouches for event #{checkpoint.sequence}, the trail ends at #{head}")  # fmt: skip
        if checkpoint.sequence in hashes and hashes[checkpoint.sequence] != checkpoint.event_hash:
            return Verdict(False, checked, count, checkpoint.sequence, "", "differs from the signed checkpoint")
        count += 1
    return Verdict(True, checked, count)
