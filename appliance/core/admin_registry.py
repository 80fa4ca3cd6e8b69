from django.contrib import admin

from appliance.accounts.forms import TotpAuthenticationForm
from appliance.accounts.models import ApiKey, ModelGrant, Tenant
from appliance.audit.models import AuditEvent
from appliance.catalog.models import Model, ModelVersion
from appliance.core.admin import ReadOnlyAdmin
from appliance.nodes.models import Node
from appliance.rollouts.models import Deployment, Replica

admin.site.login_form = TotpAuthenticationForm
admin.site.site_header = "Inference appliance"


@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    list_display = ("name", "zone", "admin_state", "health", "grpc_address", "triton_version", "last_heartbeat")
    list_filter = ("admin_state", "health", "zone")


@admin.register(Model)
class ModelAdmin(ReadOnlyAdmin):
    list_display = ("name", "description", "created")


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ("model", "number", "format", "artifact_sha256", "max_batch_size", "decoupled", "created")
    list_filter = ("format",)


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdmin):
    list_display = ("version", "state", "error", "created", "updated")
    list_filter = ("state",)


@admin.register(Replica)
class ReplicaAdmin(ReadOnlyAdmin):
    list_display = ("deployment", "node", "state", "attempts", "error", "updated")
    list_filter = ("state",)


@admin.register(Tenant)
class TenantAdmin(ReadOnlyAdmin):
    list_display = ("slug", "name", "created")


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "name", "prefix", "created", "expires_at", "revoked_at")
    exclude = ("key_hash",)


@admin.register(ModelGrant)
class ModelGrantAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "model", "created")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("time", "actor", "origin", "action", "target_repr", "source_address", "correlation_id")
    list_filter = ("origin", "action")
    search_fields = ("actor", "action", "target_repr", "correlation_id")
