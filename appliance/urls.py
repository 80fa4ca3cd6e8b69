from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import APIRootView, DefaultRouter

import appliance.core.admin_registry  # noqa: F401  (registers the read-only admin views)
from appliance.accounts.api.views import ApiKeyViewSet, ModelGrantViewSet, TenantViewSet
from appliance.agentapi.views import AgentOperationView
from appliance.audit.api.views import AuditEventViewSet
from appliance.catalog.api.views import ModelVersionViewSet, ModelViewSet, ValidationSetViewSet
from appliance.nodes.api.views import (
    EnrolView,
    JoinTokenViewSet,
    MigDeviceViewSet,
    MigPlanView,
    NodeArtifactView,
    NodeSelfView,
    NodeViewSet,
    ReconfigurationViewSet,
)
from appliance.optimisation.api.views import GateRunViewSet, OptimisationJobViewSet, ProfileSearchViewSet
from appliance.policies.api.views import PolicyRuleViewSet
from appliance.provisioning.api.views import ProvisioningRunViewSet
from appliance.rollouts.api.views import DeploymentViewSet


class ApiRootView(APIRootView):
    resource = "api_root"  # the role matrix's name for the index of routes


router = DefaultRouter()
router.APIRootView = ApiRootView
router.register("nodes", NodeViewSet)
router.register("models", ModelViewSet)
router.register("versions", ModelVersionViewSet)
router.register("validation-sets", ValidationSetViewSet)
router.register("optimisation-jobs", OptimisationJobViewSet)
router.register("gate-runs", GateRunViewSet)
router.register("profile-searches", ProfileSearchViewSet)
router.register("deployments", DeploymentViewSet)
router.register("tenants", TenantViewSet)
router.register("api-keys", ApiKeyViewSet)
router.register("grants", ModelGrantViewSet)
router.register("audit-events", AuditEventViewSet)
router.register("policy-rules", PolicyRuleViewSet)
router.register("reconfigurations", ReconfigurationViewSet)
router.register("mig-devices", MigDeviceViewSet)
router.register("join-tokens", JoinTokenViewSet)
router.register("provisioning-runs", ProvisioningRunViewSet)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("api/v1/mig/plan/", MigPlanView.as_view(), name="mig-plan"),
    # A node's own doors: a join token (enrolment) or the node's credential, never an operator's session.
    path("api/v1/enrol/", EnrolView.as_view(), name="enrol"),
    path("api/v1/node-self/", NodeSelfView.as_view(), name="node-self"),
    path("api/v1/agent/<str:op>/", AgentOperationView.as_view(), name="agent-operation"),
    path("api/v1/node-artifacts/<str:sha256>/", NodeArtifactView.as_view(), name="node-artifact"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("healthz", healthz),
    path("admin/", admin.site.urls),
    path("console/", include("appliance.console.urls")),
]

# Under /api/ a URL no view matches answers with the API's error body (JSON), not a page.
handler400 = "appliance.core.api.bad_request"
handler404 = "appliance.core.api.not_found"
