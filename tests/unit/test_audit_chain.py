"""The audit trail proves itself: append-only in PostgreSQL, hash-chained, signed checkpoints.

Tampering is done the way an attacker with superuser access would: through SQL,
with triggers bypassed (session_replication_role = replica)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from appliance.accounts.services import tenant_create
from appliance.audit.chain import GENESIS, link_pending, verify
from appliance.audit.checkpoints import checkpoint_create, checkpoint_export
from appliance.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail() -> list[AuditEvent]:
    for slug in ("t1", "t2", "t3", "t4", "t5"):
        tenant_create(slug=slug, name=slug.upper())
    link_pending()  # what runs when a writer commits (this test's transaction never does)
    return list(AuditEvent.objects.order_by("sequence"))


def _sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(statement, params or [])
        cursor.execute("SET LOCAL session_replication_role = origin")


def _verify_fails() -> str:
    with pytest.raises(CommandError) as info:
        call_command("audit_verify", stdout=io.StringIO())
    assert info.value.returncode == 1
    return str(info.value)


def test_the_chain_links_every_event(trail: list[AuditEvent]) -> None:
    assert [e.sequence for e in trail] == [1, 2, 3, 4, 5]
    assert trail[0].prev_hash == GENESIS
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(trail, trail[1:], strict=False))
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "intact: 5 events" in out.getvalue()


def test_an_event_is_linked_right_after_its_transaction_commits(django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            tenant_create(slug="t1", name="T1")
            tenant_create(slug="t2", name="T2")
            pending = list(AuditEvent.objects.order_by("time"))
            assert [(e.sequence, e.hash) for e in pending] == [(None, ""), (None, "")], "no lock, no link before commit"
    assert len(callbacks) == 1, "one link after the commit, however many events the transaction wrote"
    linked = list(AuditEvent.objects.order_by("sequence"))
    assert [e.sequence for e in linked] == [1, 2] and [e.id for e in linked] == [e.id for e in pending]
    assert linked[0].prev_hash == GENESIS and linked[1].prev_hash == linked[0].hash
    assert verify().ok


def test_readers_link_what_is_committed_first(trail: list[AuditEvent]) -> None:
    tenant_create(slug="t6", name="T6")
    assert AuditEvent.objects.get(sequence__isnull=True).action == "tenant.create"
    verdict = verify()
    assert verdict.ok and verdict.checked == 6
    assert not AuditEvent.objects.filter(sequence__isnull=True).exists()


def test_linking_is_allowed_once_and_changes_nothing_else(trail: list[AuditEvent]) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET hash = repeat('0', 64) WHERE sequence = 5")
    tenant_create(slug="t6", name="T6")
    unlinked = AuditEvent.objects.get(sequence__isnull=True)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET sequence = 6, prev_hash = %s, hash = %s, actor = 'user:mallory' "
                       "WHERE id = %s", [trail[4].hash, "f" * 64, str(unlinked.id)])  # fmt: skip
    assert link_pending() == 1
    assert AuditEvent.objects.get(id=unlinked.id).actor == unlinked.actor


@pytest.mark.parametrize("statement", ["UPDATE audit_auditevent SET actor = 'x'", "DELETE FROM audit_auditevent", "TRUNCATE audit_auditevent"])
def test_postgresql_refuses_changes_to_the_trail(trail: list[AuditEvent], statement: str) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert AuditEvent.objects.count() == 5


def test_a_changed_row_is_named(trail: list[AuditEvent]) -> None:
    _sql("UPDATE audit_auditevent SET actor = 'user:mallory' WHERE sequence = 3")
    message = _verify_fails()
    assert f"event #3 ({trail[2].id})" in message and "content was changed" in message


def test_a_changed_change_summary_is_named(trail: list[AuditEvent]) -> None:
    _sql("""UPDATE audit_auditevent SET changes = '{"name": [null, "evil"]}' WHERE sequence = 2""")
    assert "event #2" in _verify_fails()


def test_a_deleted_row_is_named(trail: list[AuditEvent]) -> None:
    _sql("DELETE FROM audit_auditevent WHERE sequence = 2")
    message = _verify_fails()
    assert "event #2" in message and "deleted" in message


def test_swapped_rows_are_named(trail: list[AuditEvent]) -> None:
    _sql("UPDATE audit_auditevent SET sequence = -1 WHERE sequence = 2")
    _sql("UPDATE audit_auditevent SET sequence = 2 WHERE sequence = 3")
    _sql("UPDATE audit_auditevent SET sequence = 3 WHERE sequence = -1")
    assert "event #2" in _verify_fails()


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoint(trail: list[AuditEvent]) -> None:
    checkpoint_create()
    # Mallory drops the last two events: the chain itself stays consistent.
    _sql("DELETE FROM audit_auditevent WHERE sequence > 3")
    message = _verify_fails()
    assert "event #4" in message and "checkpoint" in message


def test_a_forged_checkpoint_is_refused(trail: list[AuditEvent]) -> None:
    checkpoint = checkpoint_create()
    assert checkpoint is not None
    _sql("UPDATE audit_auditcheckpoint SET sequence = 2 WHERE id = %s", [str(checkpoint.id)])
    assert "bad signature" in _verify_fails()


def test_an_exported_checkpoint_kept_off_the_box_still_catches_tampering(trail: list[AuditEvent], tmp_path: Any) -> None:
    kept = tmp_path / "checkpoint.json"
    kept.write_text(json.dumps(checkpoint_export(checkpoint_create())))
    call_command("audit_verify", "--checkpoint", str(kept), stdout=io.StringIO())
    # Mallory deletes everything including the checkpoint table and rebuilds a shorter trail.
    _sql("DELETE FROM audit_auditcheckpoint")
    _sql("DELETE FROM audit_auditevent WHERE sequence = 5")
    assert verify().ok, "the remaining chain is self-consistent"
    with pytest.raises(CommandError, match="event #5"):
        call_command("audit_verify", "--checkpoint", str(kept), stdout=io.StringIO())


def test_ranges_can_be_verified(trail: list[AuditEvent]) -> None:
    assert verify(first=2, last=4).checked == 3
    _sql("UPDATE audit_auditevent SET actor = 'x' WHERE sequence = 5")
    assert verify(first=2, last=4).ok
    assert not verify(first=4).ok


def test_exports(trail: list[AuditEvent], tmp_path: Any) -> None:
    out = tmp_path / "audit.jsonl"
    call_command("audit_export", "--format", "jsonl", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sequence"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[4]["hash"] == trail[4].hash
    csv_out = tmp_path / "audit.csv"
    call_command("audit_export", "--format", "csv", "--out", str(csv_out), "--action", "tenant.create")
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("sequence,id,time") and len(lines) == 6


def test_retention_prunes_old_events_and_the_rest_still_verifies(trail: list[AuditEvent]) -> None:
    from datetime import timedelta

    from appliance.audit.retention import audit_prune

    result = audit_prune(before=trail[2].time + timedelta(microseconds=1))
    assert result is not None and (result.upto_sequence, result.deleted) == (3, 3)
    assert list(AuditEvent.objects.values_list("sequence", flat=True)) == [4, 5, 6]
    prune_event = AuditEvent.objects.get(sequence=6)
    assert prune_event.action == "audit.prune" and prune_event.changes["upto_sequence"] == 3
    verdict = verify()
    assert verdict.ok and verdict.checked == 3, verdict.describe()
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "intact: 3 events" in out.getvalue()


def test_after_retention_tampering_is_still_caught(trail: list[AuditEvent]) -> None:
    from datetime import timedelta

    from appliance.audit.retention import audit_prune

    audit_prune(before=trail[1].time + timedelta(microseconds=1))
    _sql("UPDATE audit_auditevent SET actor = 'x' WHERE sequence = 3")
    assert "event #3" in _verify_fails()
    _sql("UPDATE audit_auditevent SET actor = %s WHERE sequence = 3", [trail[2].actor])
    assert verify().ok
    _sql("DELETE FROM audit_auditcheckpoint")
    assert "retention anchor at #2 has no signed checkpoint" in _verify_fails()


def test_the_trigger_lets_only_a_prune_delete_and_only_old_events(trail: list[AuditEvent]) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('appliance.audit_prune_upto', '2', true)")
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = 4")
    assert AuditEvent.objects.count() == 5


def test_retention_keeps_the_newest_event(trail: list[AuditEvent]) -> None:
    from django.utils import timezone

    from appliance.audit.retention import audit_prune
    from appliance.core.errors import DomainError

    with pytest.raises(DomainError, match="keep at least the newest"):
        audit_prune(before=timezone.now())
