from django.contrib.auth import views as auth_views
from django.urls import path

from appliance.accounts.forms import ConsoleAuthenticationForm
from appliance.console import catalog, fleet, optimisation, policies, provisioning, tenants, views

app_name = "console"

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="console/login.html",
                                                authentication_form=ConsoleAuthenticationForm), name="login"),  # fmt: skip
    path("logout/", auth_views.LogoutView.as_view(next_page="console:login"), name="logout"),
    path("", views.overview, name="overview"),
    path("rollouts-panel/", views.rollouts_panel, name="rollouts-panel"),
    # Fleet
    path("nodes/", fleet.nodes, name="nodes"),
    path("join-tokens/", fleet.join_tokens, name="join-tokens"),
    path("provisioning/", provisioning.runs, name="provisioning"),
    path("provisioning/start/", provisioning.run_start, name="provisioning-start"),
    path("provisioning/<uuid:pk>/", provisioning.run_page, name="provisioning-run"),
    path("provisioning/<uuid:pk>/panel/", provisioning.run_panel, name="provisioning-run-panel"),
    path("join-tokens/new/", fleet.join_token_create, name="join-token-create"),
    path("join-tokens/<uuid:pk>/revoke/", fleet.join_token_revoke, name="join-token-revoke"),
    path("nodes/<slug:name>/", fleet.node, name="node"),
    path("nodes/<slug:name>/<slug:action>/", fleet.node_action, name="node-action"),
    path("nodes/<slug:name>/gpus/<int:index>/layout/", fleet.mig_editor, name="mig-editor"),
    path("nodes/<slug:name>/gpus/<int:index>/layout/preview/", fleet.mig_preview, name="mig-preview"),
    path("nodes/<slug:name>/gpus/<int:index>/layout/apply/", fleet.mig_apply, name="mig-apply"),
    path("reconfigurations/<uuid:pk>/", fleet.reconfiguration, name="reconfiguration"),
    path("reconfigurations/<uuid:pk>/panel/", fleet.reconfiguration_panel, name="reconfiguration-panel"),
    # Catalog and rollouts
    path("models/", catalog.models, name="models"),
    path("models/upload/", catalog.upload, name="upload"),
    path("models/<slug:name>/", catalog.model, name="model"),
    path("models/<slug:name>/validation-sets/", catalog.validation_set_add, name="validation-set-add"),
    path("models/<slug:name>/versions/<int:number>/rollout/", catalog.rollout_form, name="rollout-form"),
    path("models/<slug:name>/versions/<int:number>/rollout/start/", catalog.rollout_start, name="rollout-start"),
    path("models/<slug:name>/optimise/", optimisation.optimisation_start, name="optimisation-start"),
    path("optimisation/<uuid:pk>/", optimisation.optimisation_job, name="optimisation-job"),
    path("optimisation/<uuid:pk>/panel/", optimisation.optimisation_job_panel, name="optimisation-job-panel"),
    path("models/<slug:name>/profile-search/", optimisation.profile_search_start, name="profile-search-start"),
    path("profile-searches/<uuid:pk>/", optimisation.profile_search_page, name="profile-search"),
    path("profile-searches/<uuid:pk>/panel/", optimisation.profile_search_panel, name="profile-search-panel"),
    path("profile-searches/<uuid:pk>/apply/", optimisation.profile_search_apply_view, name="profile-search-apply"),
    path("optimisation/<uuid:pk>/cancel/", optimisation.optimisation_job_cancel, name="optimisation-job-cancel"),
    path("profile-searches/<uuid:pk>/cancel/", optimisation.profile_search_cancel, name="profile-search-cancel"),
    path("models/<slug:name>/gate-run/", optimisation.gate_run_start, name="gate-run-start"),
    path("gate-runs/<uuid:pk>/", optimisation.gate_run_page, name="gate-run"),
    path("gate-runs/<uuid:pk>/panel/", optimisation.gate_run_panel, name="gate-run-panel"),
    path("gate-runs/<uuid:pk>/cancel/", optimisation.gate_run_cancel, name="gate-run-cancel"),
    path("deployments/", views.deployments, name="deployments"),
    path("deployments/<uuid:pk>/", views.deployment, name="deployment"),
    path("deployments/<uuid:pk>/panel/", views.deployment_panel, name="deployment-panel"),
    path("deployments/<uuid:pk>/<slug:action>/", views.deployment_action, name="deployment-action"),
    # Tenants and keys
    path("tenants/", tenants.tenants, name="tenants"),
    path("tenants/create/", tenants.tenant_create, name="tenant-create"),
    path("tenants/<slug:slug>/", tenants.tenant, name="tenant"),
    path("tenants/<slug:slug>/update/", tenants.tenant_update, name="tenant-update"),
    path("tenants/<slug:slug>/grants/", tenants.grant, name="grant"),
    path("tenants/<slug:slug>/keys/", tenants.key_create, name="key-create"),
    path("tenants/<slug:slug>/keys/<uuid:pk>/rotate/", tenants.key_rotate, name="key-rotate"),
    path("tenants/<slug:slug>/keys/<uuid:pk>/revoke/", tenants.key_revoke, name="key-revoke"),
    # Policy, metrics, audit
    path("policies/", policies.policies, name="policies"),
    path("policies/dry-run/", policies.dry_run, name="policy-dry-run"),
    path("policies/save/", policies.save, name="policy-save"),
    path("policies/<uuid:pk>/delete/", policies.delete, name="policy-delete"),
    path("metrics/", views.metrics_page, name="metrics"),
    path("audit/", views.audit, name="audit"),
    path("audit/export.<str:fmt>", views.audit_export, name="audit-export"),
    path("audit/verify/", views.audit_verify, name="audit-verify"),
]
