"""The Audited mixin: models that inherit it get create/update/delete audit rows.

The rows are written by signal handlers (appliance/audit/signals.py) inside the
same transaction as the change, so a rolled-back change leaves no audit row and
a committed change always has one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models

REDACTED = "[redacted]"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return str(value)


class Audited(models.Model):
    """Abstract base for models whose every change is audited."""

    # Fields whose values never reach the audit trail (hashes, secrets).
    audit_redact: ClassVar[frozenset[str]] = frozenset()
    # Fields that change by themselves and would drown the trail (heartbeats).
    audit_ignore: ClassVar[frozenset[str]] = frozenset({"updated"})
    audit_type: ClassVar[str] = ""
    # The audited fields as last loaded or saved: what the next save is compared with.
    _audit_snapshot: dict[str, Any]

    class Meta:
        abstract = True

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any) -> Any:
        instance = super().from_db(db, field_names, values)
        instance._audit_snapshot = instance.audit_state()
        return instance

    def audit_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for field in self._meta.concrete_fields:
            if field.name in self.audit_ignore:
                continue
            value = getattr(self, field.attname)
            state[field.name] = REDACTED if field.name in self.audit_redact and value else _plain(value)
        return state

    def audit_label(self) -> str:
        return str(self)[:200]

    def audit_kind(self) -> str:
        return self.audit_type or self._meta.model_name or "object"
