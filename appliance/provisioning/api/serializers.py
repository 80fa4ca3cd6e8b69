from __future__ import annotations

from rest_framework import serializers

from appliance.provisioning.choices import RunKind
from appliance.provisioning.models import ProvisioningEvent, ProvisioningRun


class ProvisioningEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProvisioningEvent
        fields = ["counter", "event", "host", "task", "changed", "time"]
        read_only_fields = fields


class ProvisioningRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProvisioningRun
        fields = ["id", "kind", "playbook", "limit", "inventory", "check_mode", "state", "correlation_id", "requested_by", "rc", "recap",
                  "drifted", "error", "created", "started", "finished"]  # fmt: skip
        read_only_fields = fields


class ProvisioningRunDetailSerializer(ProvisioningRunSerializer):
    events = ProvisioningEventSerializer(many=True, read_only=True)

    class Meta(ProvisioningRunSerializer.Meta):
        fields = [*ProvisioningRunSerializer.Meta.fields, "events", "log"]
        read_only_fields = fields


class ProvisioningRunCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=RunKind.choices)
    limit = serializers.RegexField(r"^[A-Za-z0-9_.:,*!&-]{0,200}$", required=False, default="", allow_blank=True,
                                   help_text="inventory host pattern (a node's inventory name); blank: every node")  # fmt: skip
