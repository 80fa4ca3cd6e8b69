from __future__ import annotations

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request

from appliance.audit.api.serializers import AuditEventSerializer
from appliance.audit.export import FORMATS, export_lines
from appliance.audit.models import AuditEvent
from appliance.audit.selectors import audit_events
from appliance.core.errors import DomainError

_FILTERS = [
    *(OpenApiParameter(name, str) for name in ("actor", "origin", "action", "target_type", "target_id", "correlation_id")),
    *(OpenApiParameter(name, OpenApiTypes.DATETIME, description="ISO 8601") for name in ("since", "until")),
]


@extend_schema_view(list=extend_schema(parameters=_FILTERS))
class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail, read-only."""

    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    resource = "audit_event"

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return audit_events(self.request.query_params)

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=list(FORMATS)), *_FILTERS],
        responses={(200, "application/x-ndjson"): str, (200, "text/csv"): str},
    )
    @action(detail=False, methods=["get"], url_path="export")
    def export(self, request: Request) -> StreamingHttpResponse:
        """The filtered trail as JSON lines (default) or CSV, streamed."""
        fmt = request.query_params.get("format", "jsonl")
        if fmt not in FORMATS:
            raise DomainError(f"format must be one of {', '.join(FORMATS)}")
        events = self.get_queryset().order_by("sequence").iterator(chunk_size=2000)
        content_type = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
        response = StreamingHttpResponse(export_lines(events, fmt), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="audit.{fmt}"'
        return response
