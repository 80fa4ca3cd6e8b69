"""Every operation of the REST API, fuzzed from the schema `/api/schema/` serves
(schemathesis: schema examples, boundary values, then generated inputs, valid and
invalid), against a real HTTP server and PostgreSQL. Every answer must keep the
contract: no 5xx, a status code the operation declares, a declared content type,
and a body that conforms to the declared schema. No operation is excluded: streaming
exports and text/plain answers are checked like the rest. Methods no operation
declares are left to test_api_contract.py (see CONFIG).

The server is Django's own WSGI server (what `runserver` and pytest-django's
`live_server` run) on a socket, in a thread of this process, serving the full
stack (middleware, parsers, views, serializers, services) on the test's own
PostgreSQL connection, inside the test's transaction. Why not the two usual ways:
`live_server` needs a transactional test, whose flush (TRUNCATE) the append-only
audit trail refuses by design; gunicorn (or any other process) needs committed
rows, which cannot be removed afterwards (audit again) and would leak into later
tests (a pending deployment the fuzzer created is work a later end-to-end fleet's
worker would pick up). Sharing the transaction rolls every operation back, sends
no Celery message (on_commit never fires), and puts a server error's traceback in
this test's report.

Each operation is its own test: it starts from the same seed (a tenant, a model
with a version, a grant, two nodes with a GPU each, a MIG slice, a deployment, an
API key, a policy rule, a reconfiguration), rolled back after it, so a failure
replays alone (`-k "POST and deployments"`). Generated path
parameters and body references are swapped, at Hypothesis's choice, for the
seed's names and ids, so that some requests of every operation reach the success
path (and its answer is checked too) instead of stopping at 404 or 400.

Runs are reproducible: derandomized, with a fixed seed and no example database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.serialization import Binary  # what it generates for `format: binary`

from tests.http_server import http_server

# Examples per operation for the generated phase; the schema's examples and the
# boundary values of each parameter (the coverage phase) come on top.
EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Fuzz dictionaries: values that broke this API once (NUL characters PostgreSQL cannot
# store, integers past its bigint), mixed into what is generated for every string and
# integer parameter and the body fields that name objects. Schemathesis keeps a value only where
# the mode allows it: schema-valid ones in positive cases, violating ones in negative.
CONFIG = SchemathesisConfig.from_str("""
seed = 13
[generation]
deterministic = true
database = "none"
dictionaries = { string = { dictionary = "nul", probability = 0.15 }, integer = { dictionary = "huge", probability = 0.15 } }
[dictionaries.nul]
values = ["\\u0000", "acme\\u0000", "digits\\u0000", "node-a\\u0000"]
[dictionaries.huge]
values = [9223372036854775808, 100000000000000000000, -9223372036854775809]
[parameters]
"body.tenant" = { dictionary = "nul", probability = 0.15 }
"body.model" = { dictionary = "nul", probability = 0.15 }
"body.models[*]" = { dictionary = "nul", probability = 0.15 }
"body.version" = { dictionary = "nul", probability = 0.15 }
"body.parent" = { dictionary = "nul", probability = 0.15 }
"body.nodes[*]" = { dictionary = "nul", probability = 0.15 }
"body.mig_devices[*]" = { dictionary = "nul", probability = 0.15 }
"body.name" = { dictionary = "nul", probability = 0.15 }
"body.slug" = { dictionary = "nul", probability = 0.15 }
[phases.coverage]
unexpected-methods = []
""")
# Methods an operation does not declare (PUT on a list, OPTIONS…) are not fuzzed here: one
# deterministic request per URL and method does it (test_api_contract.py, "undeclared" and
# "options"), instead of a few more for each of the 56 operations.


def _served_schema() -> dict[str, Any]:
    """The schema exactly as /api/schema/ serves it (read at collection: it needs no database)."""
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content[:500]
    served: dict[str, Any] = response.json()
    return served


schema = schemathesis.openapi.from_dict(_served_schema(), config=CONFIG)


@dataclass
class Seed:
    """What fuzzed requests may name: the seed's object of each collection of the API
    (path parameters), and for body fields that name other objects, values that do."""

    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    by_collection: dict[str, str] = field(default_factory=dict)
    by_body_field: dict[str, list[Any]] = field(default_factory=dict)
    # Whole valid bodies for the creates that a random body almost never gets right.
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)


SEED = Seed()


def _seed_rows() -> Seed:
    """Rows made through the services the API uses. `digits` is deployed on node-a (a
    second deployment of it is refused as busy); `spare` is neither granted nor deployed
    (a grant or deployment of it can succeed); node-b's GPU has a reconfiguration pending."""
    from appliance.accounts import services as accounts
    from appliance.audit.models import AuditEvent
    from appliance.nodes.models import Gpu, MigDevice
    from appliance.nodes.services import reconfiguration_create
    from appliance.policies.services import policy_rule_create
    from appliance.rollouts.services import deployment_create
    from tests.factories import make_node, make_version, manifest, python_artifact

    tenant = accounts.tenant_create(slug="acme", name="Acme risk analytics")
    version, spare = make_version("digits"), make_version("spare")
    grant = accounts.grant_create(tenant=tenant, model=version.model)
    key, _ = accounts.api_key_create(tenant=tenant, name="fuzz", models=[version.model])
    node, other = make_node("node-a"), make_node("node-b")
    for host, mig in ((node, True), (other, False)):
        Gpu.objects.create(node=host, index=0, uuid=f"GPU-{host.name}", product="NVIDIA A100-SXM4-40GB",
                           model="A100-40GB", memory_mib=40960, mig_enabled=mig)  # fmt: skip
    slice_ = MigDevice.objects.create(gpu=node.gpus.get(), uuid="MIG-fuzz-1", profile="3g.20gb", start=0, size=4,
                                      gpu_instance_id=1, memory_mib=20096, grpc_address="127.0.0.1:1")  # fmt: skip
    deployment = deployment_create(version=version, nodes=[node])
    rule = policy_rule_create(position=1, name="fuzz-rule", effect="allow", operations=["process"])
    run = reconfiguration_create(node=other, gpu_index=0, layout=["7g.40gb"])
    event = AuditEvent.objects.order_by("-sequence").first()
    assert event is not None
    digits = manifest("digits")
    return Seed(by_collection={
        "tenants": tenant.slug, "models": version.model.name, "nodes": node.name, "mig-devices": slice_.uuid,
        "versions": str(version.pk), "deployments": str(deployment.pk), "api-keys": str(key.pk),
        "grants": str(grant.pk), "policy-rules": str(rule.pk), "reconfigurations": str(run.pk),
        "audit-events": str(event.pk),
    }, by_body_field={
        "tenant": [tenant.slug], "model": ["digits", "spare"], "models": [["digits"]], "parent": [str(version.pk)],
        "version": [str(version.pk), str(spare.pk)], "nodes": [[node.name]], "mig_devices": [[slice_.uuid]],
        "gpu": [0], "layout": [["3g.20gb", "3g.20gb"]],
    }, bodies={
        "POST /api/v1/versions/": {"model": "spare", "format": "python", "artifact": Binary(python_artifact()),
                                   "signature": json.dumps(digits["signature"]), "max_batch_size": 8},
        "POST /api/v1/deployments/": {"version": str(spare.pk), "nodes": [node.name], "strategy": "canary",
                                      "steps": [10, 100]},
        "POST /api/v1/grants/": {"tenant": tenant.slug, "model": "spare"},
        "POST /api/v1/api-keys/": {"tenant": tenant.slug, "name": "second", "models": ["digits"]},
        "POST /api/v1/nodes/{name}/reconfigure/": {"gpu": 0, "layout": ["3g.20gb", "3g.20gb"]},
    })  # fmt: skip


@pytest.fixture
def served(db: None, django_user_model: Any) -> Iterator[Seed]:
    """The seed and an administrator's token (every operation is allowed, so answers are
    about the input, not the role), with the server that sees them."""
    from appliance.accounts.models import AccountRole
    from appliance.accounts.services import operator_token_create

    admin = django_user_model.objects.create_user("fuzz-admin")  # no password: hashing one costs a second
    AccountRole.objects.create(user=admin, role="admin")
    _, token = operator_token_create(user=admin, name="fuzz")
    seed = _seed_rows()
    with http_server() as url:
        seed.url, seed.headers = url, {"Authorization": f"Bearer {token}"}
        SEED.__dict__.update(seed.__dict__)  # where the generation hooks read it
        yield seed


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The generated name or id, or the seed's object of this collection (/api/v1/<collection>/…)."""
    known = SEED.by_collection.get(context.operation.path.split("/")[3])
    if known is None or not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    return st.fixed_dictionaries({name: st.sampled_from([value, known]) for name, value in path_parameters.items()})


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Each field that names another object: as generated, or naming one of the seed's;
    or, for some creates, a whole valid body."""
    if not isinstance(body, dict):
        return st.just(body)
    known = SEED.by_body_field
    swapped = st.fixed_dictionaries({k: st.sampled_from([v, *known.get(k, [])]) for k, v in body.items()})
    whole = SEED.bodies.get(context.operation.label)
    return swapped if whole is None else st.one_of(swapped, st.just(whole))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_every_answer_keeps_the_schema(case: Any, served: Seed) -> None:
    case.call_and_validate(base_url=served.url, headers=served.headers, checks=CHECKS)
