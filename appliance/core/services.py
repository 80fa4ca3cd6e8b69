"""Write helpers shared by the apps' services."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import models

M = TypeVar("M", bound=models.Model)


def update_locked(instance: M, **values: Any) -> M:
    """Re-reads the row FOR UPDATE, sets the given fields (None means unchanged),
    validates and saves it: the Audited signals then record exactly what changed.
    Call inside the service's transaction."""
    locked = type(instance).objects.select_for_update().get(pk=instance.pk)  # type: ignore[attr-defined]
    for field, value in values.items():
        if value is not None:
            setattr(locked, field, value)
    locked.full_clean()
    locked.save()
    return locked
