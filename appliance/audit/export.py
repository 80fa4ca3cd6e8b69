"""Exports of the audit trail as JSON lines or CSV (what an auditor takes away)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator

from appliance.audit.chain import _plain
from appliance.audit.models import AuditEvent

COLUMNS = (
    "sequence", "id", "time", "actor", "origin", "action", "target_type", "target_id", "target_repr",
    "changes", "source_address", "correlation_id", "prev_hash", "hash",
)  # fmt: skip
FORMATS = ("jsonl", "csv")


def _row(event: AuditEvent) -> dict[str, object]:
    return {name: _plain(getattr(event, name)) for name in COLUMNS}


def export_lines(events: Iterable[AuditEvent], fmt: str) -> Iterator[str]:
    if fmt == "jsonl":
        for event in events:
            yield json.dumps(_row(event), sort_keys=True, ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    yield buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    for event in events:
        row = _row(event)
        row["changes"] = json.dumps(row["changes"], sort_keys=True, ensure_ascii=False)
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
