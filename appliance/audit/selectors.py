from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from django.db.models import QuerySet
from django.utils.dateparse import parse_datetime

from appliance.audit.chain import link_pending
from appliance.audit.models import AuditEvent
from appliance.core.errors import DomainError

_EXACT = ("actor", "origin", "action", "target_type", "target_id", "correlation_id")


def audit_events(filters: Mapping[str, str]) -> QuerySet[AuditEvent]:
    """Events matching the given filters; 'since'/'until' take ISO 8601 times. What is
    committed is linked first, so a reader sees every event in its place in the chain."""
    link_pending()
    qs = AuditEvent.objects.all()
    for name in _EXACT:
        if filters.get(name):
            qs = qs.filter(**{name: filters[name]})
    for name, lookup in (("since", "time__gte"), ("until", "time__lt")):
        if filters.get(name):
            qs = qs.filter(**{lookup: moment(name, filters[name])})
    return qs


def moment(name: str, text: str) -> datetime:
    """An ISO 8601 time as UTC (no offset: UTC). PostgreSQL takes offsets up to 15:59
    only, and a time that is real in Python may not be (month 13, year 10000 in UTC)."""
    try:
        moment = parse_datetime(text)
        if moment is not None:
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        pass
    raise DomainError(f"{name}={text!r} is not an ISO 8601 date-time")
