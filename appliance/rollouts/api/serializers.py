from rest_framework import serializers

from appliance.catalog.models import ModelVersion
from appliance.nodes.models import MigDevice, Node
from appliance.rollouts.models import Deployment, Replica


class ReplicaSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Replica
        fields = ["id", "node", "mig_uuid", "state", "error", "attempts", "updated"]
        read_only_fields = fields


class DeploymentSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version_number = serializers.IntegerField(source="version.number", read_only=True)
    replicas = ReplicaSerializer(many=True, read_only=True)

    class Meta:
        model = Deployment
        fields = ["id", "model", "version", "version_number", "state", "error", "replicas", "created", "updated"]
        read_only_fields = fields


class DeploymentCreateSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.select_related("model"))
    nodes = serializers.SlugRelatedField(slug_field="name", queryset=Node.objects.all(), many=True, required=False,
                                         help_text="replicas on these nodes' main Tritons")  # fmt: skip
    mig_devices = serializers.SlugRelatedField(
        slug_field="uuid", queryset=MigDevice.objects.select_related("gpu__node"), many=True, required=False,
        help_text="replicas on these MIG devices (one Triton each)",
    )  # fmt: skip

    def validate(self, attrs: dict) -> dict:  # type: ignore[type-arg]
        if not attrs.get("nodes") and not attrs.get("mig_devices"):
            raise serializers.ValidationError("name at least one node or MIG device")
        return attrs
