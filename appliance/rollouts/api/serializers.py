from __future__ import annotations

import time
from typing import Any

from rest_framework import serializers

from appliance.catalog.models import ModelVersion
from appliance.nodes.models import MigDevice, Node
from appliance.rollouts.choices import DeploymentState, Strategy
from appliance.rollouts.models import DEFAULT_GATE, AutoscaleDecision, Deployment, Replica


class ReplicaSerializer(serializers.ModelSerializer):
    node: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Replica
        fields = ["id", "node", "mig_uuid", "state", "error", "attempts", "updated"]
        read_only_fields = fields


class AutoscaleDecisionSerializer(serializers.ModelSerializer):
    class Meta:
        model = AutoscaleDecision
        fields = ["time", "replicas_before", "replicas_after", "reason", "inputs"]
        read_only_fields = fields


class DeploymentSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version_number = serializers.IntegerField(source="version.number", read_only=True)
    previous_version = serializers.IntegerField(source="previous.version.number", read_only=True, allow_null=True)
    replicas = ReplicaSerializer(many=True, read_only=True)
    gate_now = serializers.SerializerMethodField(help_text="the current step's numbers so far (progressing rollouts)")

    class Meta:
        model = Deployment
        fields = [
            "id", "model", "version", "version_number", "previous", "previous_version", "state", "error", "strategy",
            "steps", "step_index", "step_started", "step_seconds", "traffic_percent", "paused", "gate", "gate_log",
            "gate_now", "replicas", "scale_decisions", "created", "updated",
        ]  # fmt: skip
        read_only_fields = fields

    scale_decisions = serializers.SerializerMethodField(help_text="the autoscaler's last 10 decisions (detail only)")

    def get_scale_decisions(self, deployment: Deployment) -> list[dict[str, Any]] | None:
        if not self.context.get("detail"):
            return None
        return AutoscaleDecisionSerializer(deployment.scale_decisions.all()[:10], many=True).data  # type: ignore[return-value]

    def get_gate_now(self, deployment: Deployment) -> dict[str, Any] | None:
        if deployment.state != DeploymentState.PROGRESSING or not self.context.get("detail"):
            return None
        from appliance.rollouts.progress import judge

        try:
            verdict, record = judge(deployment, time.time())
        except Exception:  # Redis down: the rollout waits too; say so rather than fail the read
            return {"error": "gateway statistics unavailable"}
        return {"verdict": verdict, **record}


class DeploymentCreateSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.select_related("model"))
    nodes = serializers.SlugRelatedField(slug_field="name", queryset=Node.objects.all(), many=True, required=False,
                                         help_text="replicas on these nodes' main Tritons")  # fmt: skip
    mig_devices = serializers.SlugRelatedField(
        slug_field="uuid", queryset=MigDevice.objects.select_related("gpu__node"), many=True, required=False,
        help_text="replicas on these MIG devices (one Triton each)",
    )  # fmt: skip
    replicas = serializers.IntegerField(min_value=1, max_value=1000, required=False,
                                        help_text="or: this many replicas on nodes the placement picks")  # fmt: skip
    strategy = serializers.ChoiceField(choices=Strategy.choices, default=Strategy.ALL_AT_ONCE)
    steps = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=100), required=False,
                                  max_length=20, help_text="canary: traffic percentages, e.g. [5, 25, 100]")  # fmt: skip
    step_seconds = serializers.IntegerField(min_value=0, max_value=86400, required=False,
                                            help_text="how long each step is held under the gate "
                                            "(blue-green: the rollback window)")  # fmt: skip
    gate = serializers.DictField(child=serializers.FloatField(min_value=0), required=False,
                                 help_text=f"overrides of {sorted(DEFAULT_GATE)}")  # fmt: skip
    gate_override_reason = serializers.CharField(
        max_length=1000, required=False,
        help_text="admins only: deploy a version the accuracy gate refuses, for this reason (audited)",
    )  # fmt: skip
