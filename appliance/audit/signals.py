"""Automatic audit rows for every Audited model (create, update with a diff, delete)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from appliance.audit.mixins import Audited
from appliance.audit.services import audit_record


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: [before.get(name), value] for name, value in after.items() if before.get(name) != value}


@receiver(post_save)
def audit_saved(sender: type, instance: Any, created: bool, raw: bool = False, **_: Any) -> None:
    if raw or not isinstance(instance, Audited):
        return
    after = instance.audit_state()
    if created:
        changes: dict[str, Any] = {name: [None, value] for name, value in after.items() if value not in (None, "")}
        action = f"{instance.audit_kind()}.create"
    else:
        changes = _diff(getattr(instance, "_audit_snapshot", {}), after)
        if not changes:
            return
        action = f"{instance.audit_kind()}.update"
    instance._audit_snapshot = after
    audit_record(
        action=action,
        target_type=instance.audit_kind(),
        target_id=str(instance.pk),
        target_repr=instance.audit_label(),
        changes=changes,
    )


@receiver(post_delete)
def audit_deleted(sender: type, instance: Any, **_: Any) -> None:
    if not isinstance(instance, Audited):
        return
    audit_record(
        action=f"{instance.audit_kind()}.delete",
        target_type=instance.audit_kind(),
        target_id=str(instance.pk),
        target_repr=instance.audit_label(),
        changes={name: [value, None] for name, value in instance.audit_state().items()},
    )
