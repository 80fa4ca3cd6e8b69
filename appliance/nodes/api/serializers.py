from rest_framework import serializers

from appliance.nodes.models import Node


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = [
            "id", "name", "zone", "grpc_address", "http_address", "metrics_address",
            "state", "triton_version", "last_heartbeat", "created", "updated",
        ]  # fmt: skip
        read_only_fields = ["id", "state", "triton_version", "last_heartbeat", "created", "updated", "metrics_address"]


class NodeUpdateSerializer(serializers.Serializer):
    zone = serializers.CharField(max_length=63)
