from django.contrib.auth import views as auth_views
from django.urls import path

from appliance.accounts.forms import ConsoleAuthenticationForm
from appliance.console import views

app_name = "console"

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="console/login.html",
                                                authentication_form=ConsoleAuthenticationForm), name="login"),  # fmt: skip
    path("logout/", auth_views.LogoutView.as_view(next_page="console:login"), name="logout"),
    path("", views.overview, name="overview"),
    path("rollouts-panel/", views.rollouts_panel, name="rollouts-panel"),
    path("nodes/", views.nodes, name="nodes"),
    path("nodes/<slug:name>/", views.node, name="node"),
    path("deployments/", views.deployments, name="deployments"),
    path("deployments/<uuid:pk>/", views.deployment, name="deployment"),
    path("deployments/<uuid:pk>/<slug:action>/", views.deployment_action, name="deployment-action"),
    path("audit/", views.audit, name="audit"),
]
