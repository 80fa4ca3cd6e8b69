"""Reads of the catalog that need care."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from appliance.catalog.models import GateResult, ModelVersion, ValidationSet

GateStatus = list[tuple[ValidationSet, GateResult | None]]


def gate_status(version: ModelVersion) -> GateStatus:
    """Each validation set of the version's model, by name, with the version's latest
    gate result on it (None: the gate was never run there)."""
    return gate_statuses([version])[version.pk]


def gate_statuses(versions: Sequence[ModelVersion]) -> dict[UUID, GateStatus]:
    """gate_status of each version, by version id, in two queries whatever the number of
    versions, sets or runs (a model's page lists them all)."""
    sets: dict[UUID, list[ValidationSet]] = {}
    model_ids = {version.model_id for version in versions}
    for validation_set in ValidationSet.objects.filter(model_id__in=model_ids).select_related("model").order_by("name"):
        sets.setdefault(validation_set.model_id, []).append(validation_set)
    latest = {
        (result.version_id, result.validation_set_id): result
        for result in GateResult.objects.filter(version__in=list(versions))
        .order_by("version_id", "validation_set_id", "-created")
        .distinct("version_id", "validation_set_id")  # PostgreSQL's DISTINCT ON: the newest of each pair
    }
    return {
        version.pk: [(s, latest.get((version.pk, s.pk))) for s in sets.get(version.model_id, [])] for version in versions
    }
