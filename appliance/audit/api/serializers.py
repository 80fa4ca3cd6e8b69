from rest_framework import serializers

from appliance.audit.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id", "sequence", "time", "actor", "origin", "action", "target_type", "target_id", "target_repr",
            "changes", "source_address", "correlation_id", "prev_hash", "hash",
        ]  # fmt: skip
        read_only_fields = fields
