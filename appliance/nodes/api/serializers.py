from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from appliance.accounts.models import Tenant
from appliance.core.api import slug_list_field
from appliance.nodes.mig.catalog import GPU_MODELS
from appliance.nodes.models import Gpu, JoinToken, MigDevice, Node, Reconfiguration, ReconfigurationStep


class MigDeviceSerializer(serializers.ModelSerializer):
    tenant: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    node = serializers.CharField(source="gpu.node.name", read_only=True)
    gpu_index = serializers.IntegerField(source="gpu.index", read_only=True)

    class Meta:
        model = MigDevice
        fields = ["uuid", "node", "gpu_index", "profile", "start", "size", "gpu_instance_id", "memory_mib",
                  "grpc_address", "metrics_address", "tenant"]  # fmt: skip
        read_only_fields = fields


class MigDeviceDedicateSerializer(serializers.Serializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", queryset=Tenant.objects.all(), allow_null=True,
                                          help_text="tenant slug, or null to share the slice again")  # fmt: skip


class GpuSerializer(serializers.ModelSerializer):
    mig_devices = MigDeviceSerializer(many=True, read_only=True)

    class Meta:
        model = Gpu
        fields = ["index", "uuid", "product", "model", "memory_mib", "mig_enabled", "mig_pending", "mig_devices",
                  "temperature_c", "ecc_corrected", "ecc_uncorrected", "ecc_uncorrected_aggregate",
                  "retired_pages_pending", "xid_events", "throttle_reasons",
                  "memory_used_mib", "remapped_rows_pending", "remap_failed", "readout_error", "readout_time"]  # fmt: skip
        read_only_fields = fields


class MigPlanRequestSerializer(serializers.Serializer):
    gpu_model = serializers.ChoiceField(choices=sorted(GPU_MODELS))
    profiles = serializers.ListField(child=serializers.CharField(max_length=32), allow_empty=True)


class MigPlanSerializer(serializers.Serializer):
    placements = serializers.ListField(child=serializers.CharField())


class NodeSerializer(serializers.ModelSerializer):
    compliance_tags = slug_list_field(required=False)
    gpus = GpuSerializer(many=True, read_only=True)
    state = serializers.CharField(read_only=True, help_text="admin state when not active, else health")
    backends = serializers.ListField(child=serializers.CharField(), read_only=True,
                                     help_text="the backends the node's Triton has, as its agent reported them")  # fmt: skip

    class Meta:
        model = Node
        fields = [
            "id", "name", "zone", "site", "compliance_tags", "grpc_address", "http_address", "metrics_address",
            "state", "admin_state", "health", "health_reasons", "health_checked", "fault",
            "triton_version", "tensorrt_version", "backends", "last_heartbeat", "gpus", "created", "updated",
            "enrolled", "credential_prefix", "credential_issued", "credential_revoked",
        ]  # fmt: skip
        read_only_fields = ["id", "admin_state", "health", "health_reasons", "health_checked", "fault", "triton_version",
                            "tensorrt_version", "backends", "last_heartbeat", "created", "updated",
                            "metrics_address", "credential_prefix", "credential_issued", "credential_revoked"]  # fmt: skip

    enrolled = serializers.SerializerMethodField(help_text="whether the node joined with a join token and holds a credential of its own")

    def get_enrolled(self, node: Node) -> bool:
        return bool(node.credential_hash)


class NodeUpdateSerializer(serializers.Serializer):
    zone = serializers.CharField(max_length=63, required=False)
    site = serializers.CharField(max_length=63, required=False, allow_blank=True)
    compliance_tags = slug_list_field(required=False)


class NodeHealthChangeSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    previous = serializers.CharField()
    health = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())


class GpuSummarySerializer(serializers.Serializer):
    count = serializers.IntegerField()
    models = serializers.ListField(child=serializers.CharField())
    mig_enabled = serializers.IntegerField(help_text="GPUs with MIG mode on")
    max_temperature_c = serializers.IntegerField(allow_null=True)


class NodeListSerializer(NodeSerializer):
    """The list shows a GPU summary; a node's detail has every GPU and MIG device."""

    gpus = None  # type: ignore[assignment]
    gpu_summary = serializers.SerializerMethodField()

    class Meta(NodeSerializer.Meta):
        fields = [f for f in NodeSerializer.Meta.fields if f != "gpus"] + ["gpu_summary"]

    @extend_schema_field(GpuSummarySerializer)
    def get_gpu_summary(self, node: Node) -> dict[str, object]:
        gpus = list(node.gpus.all())
        return {
            "count": len(gpus),
            "models": sorted({g.model or g.product for g in gpus}),
            "mig_enabled": sum(1 for g in gpus if g.mig_enabled),
            "max_temperature_c": max((g.temperature_c for g in gpus if g.temperature_c is not None), default=None),
        }


class ReconfigurationStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = ReconfigurationStep
        fields = ["name", "state", "detail", "started", "finished"]
        read_only_fields = fields


class ReconfigurationSerializer(serializers.ModelSerializer):
    node: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)
    steps = ReconfigurationStepSerializer(many=True, read_only=True)

    class Meta:
        model = Reconfiguration
        fields = ["id", "node", "gpu_index", "layout", "placements", "previous", "state", "step", "error",
                  "steps", "created", "finished"]  # fmt: skip
        read_only_fields = fields


class ReconfigureRequestSerializer(serializers.Serializer):
    gpu = serializers.IntegerField(min_value=0)
    layout = serializers.ListField(child=serializers.CharField(max_length=32), allow_empty=True,
                                   help_text="profile names for the GPU; empty turns MIG off")  # fmt: skip
    inject_failure_at = serializers.CharField(required=False, allow_blank=True, default="",
                                              help_text="tests and drills only (APPLIANCE_ALLOW_FAULT_INJECTION)")  # fmt: skip


class JoinTokenSerializer(serializers.ModelSerializer):
    state = serializers.CharField(read_only=True, help_text="unused, used, expired or revoked")
    used_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True,
                                                                               allow_null=True)  # fmt: skip

    class Meta:
        model = JoinToken
        fields = ["id", "prefix", "note", "state", "created", "created_by", "expires_at", "used_at", "used_by", "revoked_at"]
        read_only_fields = fields


class JoinTokenCreateSerializer(serializers.Serializer):
    ttl_s = serializers.IntegerField(default=settings.JOIN_TOKEN_DEFAULT_TTL_S, min_value=settings.JOIN_TOKEN_MIN_TTL_S,
                                     max_value=settings.JOIN_TOKEN_MAX_TTL_S,
                                     help_text="seconds until the token expires unused")  # fmt: skip
    note = serializers.CharField(max_length=200, required=False, default="", allow_blank=True,
                                 help_text="which server it is for (shown in the console and the audit trail)")  # fmt: skip


class JoinTokenCreatedSerializer(JoinTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="the token itself: shown this once, never stored")

    class Meta(JoinTokenSerializer.Meta):
        fields = [*JoinTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class EnrolSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200, help_text="the one-time join token an operator made")
    name = serializers.SlugField(max_length=63, help_text="the node's name (its inventory hostname)")
    zone = serializers.CharField(max_length=63, default="default")
    site = serializers.CharField(max_length=63, required=False, default="", allow_blank=True)
    compliance_tags = slug_list_field(required=False, default=list)
    machine_id = serializers.RegexField(r"^[0-9a-f]{0,64}$", required=False, default="",
                                        help_text="/etc/machine-id of the server enrolling")  # fmt: skip


class EnrolledSerializer(serializers.Serializer):
    node = NodeSerializer(read_only=True)
    credential = serializers.CharField(read_only=True, help_text="the node's own credential: shown this once")


class NodeSelfSerializer(serializers.Serializer):
    """What a node learns of itself with its credential (the playbook's re-runs and the MIG boot unit)."""

    name = serializers.CharField(read_only=True)
    zone = serializers.CharField(read_only=True)
    site = serializers.CharField(read_only=True)
    compliance_tags = serializers.ListField(child=serializers.CharField(), read_only=True)
    admin_state = serializers.CharField(read_only=True)
    broker_user = serializers.CharField(read_only=True, help_text="the node's own broker user (its password is the "
                                        "node's credential; it may use the node's queue only), '' where the control "
                                        "plane makes none")  # fmt: skip
    mig_layouts = serializers.DictField(read_only=True, help_text="GPU index -> the MIG instances it is declared to "
                                        "hold, [{profile, start}] (restored at boot by mig_boot_layout)")
