from rest_framework import serializers

from appliance.core.api import slug_list_field
from appliance.nodes.models import Node


class NodeSerializer(serializers.ModelSerializer):
    compliance_tags = slug_list_field(required=False)

    class Meta:
        model = Node
        fields = [
            "id", "name", "zone", "site", "compliance_tags", "grpc_address", "http_address", "metrics_address",
            "state", "triton_version", "last_heartbeat", "created", "updated",
        ]  # fmt: skip
        read_only_fields = ["id", "state", "triton_version", "last_heartbeat", "created", "updated", "metrics_address"]


class NodeUpdateSerializer(serializers.Serializer):
    zone = serializers.CharField(max_length=63, required=False)
    site = serializers.CharField(max_length=63, required=False, allow_blank=True)
    compliance_tags = slug_list_field(required=False)
