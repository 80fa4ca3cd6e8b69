"""Every REST operation and every console page, for every role, against the one role
matrix (appliance/accounts/access.py): allowed exactly where the matrix says so.

Operations and pages are found by walking the URLconf, so a new endpoint or page is
checked without anyone listing it here, and one that names no rule of the matrix
fails. Allowed: anything but 401/403 (400, 404 for an action a page does not know,
409, 2xx, 3xx); refused: 403. Tenant admin Tanya (acme) also asks for tenant
globex's rows wherever she may read or act: those are 404, in both faces. Each
request runs in a savepoint rolled back after it, so every role meets the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import transaction
from django.http import HttpResponseBase
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.views import APIView

from appliance.accounts import access
from appliance.accounts.models import ModelGrant
from appliance.accounts.permissions import RolePermission
from appliance.accounts.services import api_key_create
from appliance.audit.models import AuditEvent
from appliance.console.access import FROM_URL
from appliance.nodes import services as node_services
from appliance.nodes.models import Gpu, MigDevice, Reconfiguration
from appliance.optimisation.models import GateRun, OptimisationJob, ProfileSearch
from appliance.policies.models import PolicyRule
from appliance.provisioning.models import ProvisioningRun
from appliance.rollouts import services as rollouts
from tests.conftest import client_for
from tests.factories import make_node, make_validation_set, make_version

pytestmark = pytest.mark.django_db

ROLES = ("admin", "operator", "auditor", "tenant_admin")
# Django's own pages and DRF views outside the matrix, each a decision: the schema is public.
# enrol, node-self, node-artifact and agent-operation admit a join token or a node's own credential, never an
# operator's session.
PUBLIC_API = {"schema", "enrol", "node-self", "node-artifact", "agent-operation"}
PUBLIC_CONSOLE = {"login", "logout"}
_WRITES = {"create": "create", "update": "change", "partial_update": "change", "destroy": "delete"}
_NOT_NAMED = {access.READ, access.CREATE, access.CHANGE, access.DELETE}
# What each part of the console may be about, so that a page naming the wrong resource shows.
SECTIONS = {
    "": {"overview"}, "rollouts-panel": {"deployment"}, "nodes": {"node", "mig_layout"}, "join-tokens": {"join_token"}, "provisioning": {"provisioning_run"},
    "reconfigurations": {"reconfiguration"},
    "models": {"model", "version", "deployment", "validation_set", "optimisation_job", "profile_search", "gate_run"},
    "optimisation": {"optimisation_job"},
    "profile-searches": {"profile_search"},
    "gate-runs": {"gate_run"},
    "deployments": {"deployment"},
    "tenants": {"tenant", "grant", "api_key"}, "policies": {"policy_rule"}, "metrics": {"metrics"},
    "audit": {"audit_event"},
}  # fmt: skip


# --- the URLconf, walked ----------------------------------------------------------


def _patterns(patterns: list[Any], route: str = "", namespace: str = "") -> Iterator[tuple[str, str, URLPattern]]:
    for p in patterns:
        if isinstance(p, URLResolver):
            inner = f"{namespace}:{p.namespace}" if namespace and p.namespace else (p.namespace or namespace)
            yield from _patterns(p.url_patterns, route + str(p.pattern), inner or "")
        else:
            yield route + str(p.pattern), namespace, p


@dataclass(frozen=True)
class Operation:
    """One REST route and HTTP method, and what the matrix calls it."""

    url_name: str
    route: str
    method: str
    view: type[APIView]
    resource: str
    action: str
    lookup: str  # the URL argument naming a row, or ""

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.url_name}"


def api_operations() -> list[Operation]:
    found = []
    for route, _, p in _patterns(get_resolver().url_patterns):
        view = getattr(p.callback, "cls", None)
        if not route.startswith("api/") or view is None or "format" in p.pattern.regex.groupindex:
            continue
        if p.name in PUBLIC_API:
            continue
        methods = getattr(p.callback, "actions", None) or {
            m: getattr(view, "action", m) for m in ("get", "post", "patch", "put", "delete") if hasattr(view, m)
        }
        lookups = [g for g in p.pattern.regex.groupindex]
        for method, name in methods.items():
            action = access.READ if method in ("get", "head") else _WRITES.get(name, name)
            resource = getattr(view, "resource", "(none)")
            found.append(Operation(p.name or route, route, method, view, resource, action, lookups[0] if lookups else ""))
    return found


@dataclass(frozen=True)
class Page:
    """One console URL (with its action filled in where the URL names one)."""

    url_name: str
    route: str
    resource: str
    action: str
    kwargs_names: tuple[str, ...]
    url_action: str = ""

    def __str__(self) -> str:
        return f"{self.url_name}{f' {self.url_action}' if self.url_action else ''}"


def console_pages() -> list[Page]:
    found = []
    for route, namespace, p in _patterns(get_resolver().url_patterns):
        if namespace != "console" or p.name in PUBLIC_CONSOLE:
            continue
        resource, action = getattr(p.callback, "access", ("(none)", "(none)"))
        names = tuple(p.pattern.regex.groupindex)
        if action != FROM_URL:
            found.append(Page(p.name, route, resource, action, names))
            continue
        for named in sorted(set(access.MATRIX[resource].actions) - _NOT_NAMED):
            found.append(Page(p.name, route, resource, named, names, url_action=named.replace("_", "-")))
    return found


# --- the rows a URL can name: tenant acme's ("mine") and globex's ("theirs") --------


@pytest.fixture
def world(acme: Any, globex: Any, django_capture_on_commit_callbacks: Any) -> dict[str, dict[str, Any]]:
    node = make_node("gpu-01")
    gpu = Gpu.objects.create(node=node, index=0, uuid="GPU-x", product="NVIDIA H100 80GB HBM3", model="H100-80GB",
                             memory_mib=81559, mig_enabled=True)  # fmt: skip
    device = MigDevice.objects.create(gpu=gpu, uuid="MIG-a", profile="3g.40gb", start=0, size=4, gpu_instance_id=1)
    mine, theirs = make_version("digits"), make_version("secret-model")
    grants = ModelGrant.objects.create(tenant=acme, model=mine.model), ModelGrant.objects.create(tenant=globex, model=theirs.model)
    keys = api_key_create(tenant=acme, name="acme-key")[0], api_key_create(tenant=globex, name="globex-key")[0]
    with django_capture_on_commit_callbacks(execute=False):
        deployments = rollouts.deployment_create(version=mine, nodes=[node]), rollouts.deployment_create(version=theirs, nodes=[node])
    run = Reconfiguration.objects.create(node=node, gpu_index=0, layout=["7g.80gb"], placements=[], state="succeeded")
    rule = PolicyRule.objects.create(position=10, name="ok", effect="allow")
    shared = {"node": node, "mig_device": device, "reconfiguration": run, "policy_rule": rule,
              "audit_event": AuditEvent.objects.order_by("sequence").first(),
              "validation_set": make_validation_set(mine.model),
              "join_token": node_services.join_token_create(ttl_s=3600)[0],
              "provisioning_run": ProvisioningRun.objects.create(kind="drift_check", playbook="node.yml")}  # fmt: skip
    shared["optimisation_job"] = OptimisationJob.objects.create(source=mine, validation_set=shared["validation_set"],
                                                                kinds=["int8_dynamic"])  # fmt: skip
    shared["profile_search"] = ProfileSearch.objects.create(version=mine, node=node, node_name=node.name,
                                                            objective_p99_ms=100.0, concurrency=32, requests=1000,
                                                            grid={}, base_profile={})  # fmt: skip
    shared["gate_run"] = GateRun.objects.create(version=mine, sets=[])
    return {
        "mine": shared | {"tenant": acme, "model": mine.model, "version": mine, "deployment": deployments[0],
                          "api_key": keys[0], "grant": grants[0]},
        "theirs": shared | {"tenant": globex, "model": theirs.model, "version": theirs, "deployment": deployments[1],
                            "api_key": keys[1], "grant": grants[1]},
    }  # fmt: skip


@pytest.fixture
def people(admin: Any, operator: Any, auditor: Any, tenant_admin: Any) -> dict[str, Any]:
    return {"admin": admin, "operator": operator, "auditor": auditor, "tenant_admin": tenant_admin}


def _status(send: Callable[[], HttpResponseBase]) -> int:
    """The answer's status; whatever the request changed is rolled back."""
    with transaction.atomic():
        status = send().status_code
        transaction.set_rollback(True)
    return status


def _check(where: str, role: str, status: int, allowed: bool, theirs: bool = False) -> str | None:
    if theirs:
        return None if status == 404 else f"{where} as {role} on globex's row: {status}, expected 404"
    if allowed and status in (401, 403):
        return f"{where} as {role}: {status}, but the matrix allows it"
    if not allowed and status != 403:
        return f"{where} as {role}: {status}, but the matrix refuses it (403)"
    return None


def _tenant_rows(resource: str) -> bool:
    return bool(access.MATRIX[resource].tenant_path)


# --- the REST API -------------------------------------------------------------------


def _api_problems(op: Operation, world: dict[str, Any], clients: dict[str, Any]) -> Iterator[str | None]:
    if RolePermission not in op.view.permission_classes:
        yield f"{op}: {op.view.__name__} is outside the role matrix"
        return
    prefix = op.route.removeprefix("api/v1/").split("/")[0].strip("^$")
    expected = {"": "api_root", "mig": "mig_layout", "profile-searches": "profile_search"}.get(
        prefix, prefix.removesuffix("s").replace("-", "_"))
    if op.resource != expected:
        yield f"{op}: the view under /{prefix}/ names resource {op.resource!r}, not {expected!r}"
    if op.action not in access.MATRIX.get(op.resource, access.Resource({})).actions:
        yield f"{op}: {op.view.__name__} names no rule of the matrix ({op.resource}.{op.action})"
        return
    roles = access.roles_for(op.resource, op.action)

    def send(client: Any, side: str) -> int:
        url = reverse(op.url_name, kwargs={op.lookup: getattr(world[side][op.resource], op.view.lookup_field)}
                      if op.lookup else {})  # fmt: skip
        call = getattr(client, op.method)
        return _status(lambda: call(url) if op.method == "get" else call(url, {}, format="json"))

    for role, client in clients.items():
        status = send(client, "mine")
        yield _check(str(op), role, status, role in roles)
        if role in roles and op.lookup and status == 404:
            yield f"{op} as {role}: 404 on a row the role may see"
        if role == "tenant_admin" and role in roles and op.lookup and _tenant_rows(op.resource):
            yield _check(str(op), role, send(client, "theirs"), True, theirs=True)


def test_every_api_operation_follows_the_matrix(world: dict[str, Any], people: dict[str, Any]) -> None:
    operations = api_operations()
    assert len(operations) > 50 and {op.resource for op in operations} >= {"node", "deployment", "api_key"}
    clients = {role: client_for(people[role]) for role in ROLES}
    problems = [p for op in operations for p in _api_problems(op, world, clients) if p]
    assert not problems, "\n".join(problems)


def test_a_tenant_admin_lists_only_their_tenants_rows(world: dict[str, Any], tenant_admin: Any) -> None:
    tanya = client_for(tenant_admin)
    lists = [op for op in api_operations() if op.action == access.READ and not op.lookup and op.resource in access.MATRIX
             and "tenant_admin" in access.roles_for(op.resource, access.READ) and _tenant_rows(op.resource)]  # fmt: skip
    assert {op.resource for op in lists} == {"tenant", "api_key", "grant", "model", "version", "deployment"}
    for op in lists:
        body = tanya.get(reverse(op.url_name)).content.decode()
        mine, theirs = (str(getattr(world[side][op.resource], op.view.lookup_field)) for side in ("mine", "theirs"))
        assert mine in body and theirs not in body, (op.resource, body)


def test_a_view_without_a_resource_is_a_loud_error(operator: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from rest_framework.test import APIRequestFactory, force_authenticate

    class Unnamed(APIView):
        def get(self, request: Any) -> Any:
            raise AssertionError("not reached")

    request = APIRequestFactory().get("/x/")
    force_authenticate(request, user=operator)
    with pytest.raises(ImproperlyConfigured, match="Unnamed names no resource"):
        Unnamed.as_view()(request)


# --- the console --------------------------------------------------------------------


def _console_kwargs(page: Page, side: dict[str, Any]) -> dict[str, Any]:
    """Values for a console URL's arguments, by the part of the console it is in."""
    if not page.kwargs_names:
        return {}
    section = page.route.removeprefix("console/").split("/")[0]
    values = {
        "nodes": {"name": side["node"].name, "index": 0},
        "models": {"name": side["model"].name, "number": side["version"].number},
        "deployments": {"pk": side["deployment"].pk},
        "optimisation": {"pk": side["optimisation_job"].pk},
        "profile-searches": {"pk": side["profile_search"].pk},
        "gate-runs": {"pk": side["gate_run"].pk},
        "reconfigurations": {"pk": side["reconfiguration"].pk},
        "join-tokens": {"pk": side["join_token"].pk},
        "provisioning": {"pk": side["provisioning_run"].pk},
        "tenants": {"slug": side["tenant"].slug, "pk": side["api_key"].pk},
        "policies": {"pk": side["policy_rule"].pk},
        "audit": {"fmt": "csv"},
    }[section] | {"action": page.url_action}
    return {name: values[name] for name in page.kwargs_names}


def _page_problems(page: Page, world: dict[str, Any], clients: dict[str, Client]) -> Iterator[str | None]:
    if page.resource not in access.MATRIX:
        yield f"{page}: the view is not guarded (console.access.guarded)"
        return
    section = page.route.removeprefix("console/").split("/")[0]
    if page.resource not in SECTIONS[section]:
        yield f"{page}: a page under /console/{section}/ names resource {page.resource!r}"
    roles = access.roles_for(page.resource, page.action)

    def send(client: Client, side: str) -> int:
        url = reverse(f"console:{page.url_name}", kwargs=_console_kwargs(page, world[side]))

        def get_or_post() -> HttpResponseBase:
            answer = client.get(url)
            return client.post(url, {}) if answer.status_code == 405 else answer

        return _status(get_or_post)

    names_a_row = bool({"pk", "slug", "name"} & set(page.kwargs_names))
    for role, client in clients.items():
        yield _check(str(page), role, send(client, "mine"), role in roles)
        if role == "tenant_admin" and role in roles and names_a_row and _tenant_rows(page.resource):
            yield _check(str(page), role, send(client, "theirs"), True, theirs=True)


def test_every_console_page_follows_the_matrix(world: dict[str, Any], people: dict[str, Any]) -> None:
    pages = console_pages()
    assert len(pages) > 30
    clients = {role: Client() for role in ROLES}
    for role, client in clients.items():
        client.force_login(people[role])
    problems = [p for page in pages for p in _page_problems(page, world, clients) if p]
    assert not problems, "\n".join(problems)


def test_every_rule_of_the_matrix_is_reached_by_a_route_or_a_page() -> None:
    reached = {(op.resource, op.action) for op in api_operations()} | {(p.resource, p.action) for p in console_pages()}
    rules = {(name, action) for name, res in access.MATRIX.items() for action in res.actions}
    assert rules - reached == set(), "rules no endpoint or page asks for"


def test_the_matrix_is_what_the_docs_promise() -> None:
    """Spot checks of the decisions in accounts/access.py's docstring."""
    assert access.roles_for("deployment", "read") == {"admin", "operator", "auditor", "tenant_admin"}
    assert access.roles_for("deployment", "rollback") == {"admin", "operator"}
    assert access.roles_for("policy_rule", "change") == {"admin"}
    assert access.roles_for("policy_rule", "dry_run") == {"admin", "operator", "auditor"}
    # Loosening the accuracy gate is an admin's: overriding it (a deployment's gate_override_reason,
    # tests/api/test_gate.py) and deleting a validation set; adding a set only tightens it.
    assert access.roles_for("deployment", "override") == {"admin"}
    assert access.roles_for("validation_set", "delete") == {"admin"}
    assert access.roles_for("validation_set", "create") == {"admin", "operator"}
    for fleet in ("node", "mig_device", "reconfiguration", "audit_event", "policy_rule"):
        assert "tenant_admin" not in access.roles_for(fleet, "read"), fleet
    auditor_writes = {(name, action) for name, res in access.MATRIX.items() for action, roles in res.actions.items()
                      if "auditor" in roles and action != access.READ}  # fmt: skip
    assert auditor_writes == {("mig_layout", "plan"), ("policy_rule", "dry_run")}, "computations that save nothing"
    for name, res in access.MATRIX.items():
        if "tenant_admin" in res.actions.get(access.READ, ()) and name not in ("overview", "metrics", "api_root"):
            assert res.tenant_path, f"{name}: a tenant admin's rows need a path to their tenant"
