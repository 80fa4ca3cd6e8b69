"""Audited transactions never wait on each other for the audit chain (real PostgreSQL,
two connections, committed rows).

The shape of the deadlock the end-to-end tests hit twice (a replica marked failed
against the rollout judge; a reconfiguration against a heartbeat): one transaction holds a row and then
writes an audit event; the other wrote an audit event and then needs that row. While
a writer held the chain's lock from its first event to its commit, PostgreSQL had to
kill one of them. Now writers take no lock; both commit and the chain links both.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction

from appliance.accounts.models import Tenant
from appliance.accounts.services import tenant_create
from appliance.audit.chain import verify
from appliance.audit.context import audit_context
from appliance.audit.models import AuditEvent

pytestmark = [pytest.mark.e2e]  # commits rows: runs after the tests that count them


def _in_thread(work: Callable[[], None], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            with audit_context(actor="test:linking"):
                work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_row_holder_and_an_earlier_audit_writer_both_commit(db_unblocked: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    first = tenant_create(slug=f"link-a-{tag}", name="A")
    second = tenant_create(slug=f"link-b-{tag}", name="B")
    holding, audited = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holds_the_row_then_audits() -> None:
        with transaction.atomic():
            row = Tenant.objects.select_for_update().get(pk=first.pk)
            holding.set()
            assert audited.wait(10)
            row.name = "A, renamed by the row holder"
            row.save(update_fields=["name"])  # an audit event while the other waits for this row

    def audits_then_needs_the_row() -> None:
        assert holding.wait(10)
        with transaction.atomic():
            other = Tenant.objects.get(pk=second.pk)
            other.name = "B, renamed first"
            other.save(update_fields=["name"])  # an audit event first
            audited.set()
            row = Tenant.objects.select_for_update().get(pk=first.pk)  # waits for the holder's commit
            row.name = row.name + ", then by the other"
            row.save(update_fields=["name"])

    threads = [_in_thread(holds_the_row_then_audits, errors), _in_thread(audits_then_needs_the_row, errors)]
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a transaction is still waiting"
    assert errors == [], f"a transaction failed: {errors!r}"
    assert Tenant.objects.get(pk=first.pk).name == "A, renamed by the row holder, then by the other"
    events = AuditEvent.objects.filter(target_id__in=[str(first.pk), str(second.pk)], action="tenant.update")
    assert events.count() == 3 and not events.filter(sequence__isnull=True).exists(), "every event linked at commit"
    assert verify().ok
