from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import viewsets

from appliance.audit.api.serializers import AuditEventSerializer
from appliance.audit.models import AuditEvent
from appliance.audit.selectors import audit_events

_FILTERS = ["actor", "origin", "action", "target_type", "target_id", "correlation_id", "since", "until"]


@extend_schema_view(list=extend_schema(parameters=[OpenApiParameter(name, str) for name in _FILTERS]))
class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail, read-only."""

    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return audit_events(self.request.query_params)
