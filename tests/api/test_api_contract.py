"""The API's contract, case by case: what the schema-driven fuzzer (test_schema_fuzz.py)
found once, pinned down with the message a client gets. Malformed or out-of-range input
is a 400 with a message, never a 500; an archive that would unpack to more than the limit
is refused at upload; the schema declares what the views answer."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.catalog.artifacts import ArtifactError, check_archive
from appliance.catalog.models import ModelVersion
from tests.factories import make_node, make_version, manifest, python_artifact

pytestmark = pytest.mark.django_db

LISTS = ["nodes", "models", "tenants", "grants", "policy-rules", "versions", "deployments", "api-keys", "audit-events",
         "mig-devices", "reconfigurations"]  # fmt: skip


OUT_OF_RANGE = [
    ("limit=9223372036854775808", "limit", "less than or equal to 1000"),
    ("limit=0", "limit", "greater than or equal to 1"),
    ("limit=ten", "limit", "valid integer"),
    ("offset=99999999999999999999", "offset", "less than or equal to 9223372036854775807"),
    ("offset=-1", "offset", "greater than or equal to 0"),
]


@pytest.mark.parametrize("endpoint", LISTS)
def test_pages_out_of_range_are_refused(api: APIClient, endpoint: str) -> None:
    for query, field, message in OUT_OF_RANGE:
        response = api.get(f"/api/v1/{endpoint}/?{query}")
        assert response.status_code == 400, query
        assert message in response.json()[field][0]


def test_pages_in_range_still_page(api: APIClient) -> None:
    for name in ("node-a", "node-b", "node-c"):
        make_node(name)
    page = api.get("/api/v1/nodes/?limit=1&offset=1").json()
    assert page["count"] == 3 and [n["name"] for n in page["results"]] == ["node-b"]
    assert len(api.get("/api/v1/nodes/?limit=&offset=").json()["results"]) == 3, "empty is unset, as a form sends it"
    assert api.get("/api/v1/nodes/?offset=4000000000").json()["results"] == []


@pytest.mark.parametrize("endpoint", ["nodes", "versions", "deployments", "audit-events", "mig-devices/x"])
def test_nul_in_a_url_is_refused(api: APIClient, endpoint: str) -> None:
    response = api.get(f"/api/v1/{endpoint}/?model=dig%00its&actor=%00")
    assert response.status_code == 400
    assert response.json() == {"detail": "Null characters are not allowed. Found one in the URL."}
    assert api.get("/api/v1/mig-devices/MIG%00x/").status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/api/v1/api-keys/", {"tenant": "ac\x00me", "name": "k"}, "tenant"),
        ("/api/v1/api-keys/", {"tenant": "acme", "name": "k", "models": ["digits", "x\x00"]}, "models[1]"),
        ("/api/v1/deployments/", {"version": "\x00", "nodes": ["node-a"]}, "version"),
        ("/api/v1/deployments/", {"version": "v", "gate": {"error_rate\x00": 1}}, "gate.error_rate\\x00"),
        ("/api/v1/grants/", {"tenant": "acme", "model": "digits\x00"}, "model"),
        ("/api/v1/policy-rules/dry-run/", {"tenants": {"ac\x00me": {}}}, "tenants.ac\\x00me"),
        ("/api/v1/models/", {"name": "m", "serving_profile": {"warmup": {"source": "\x00"}}}, "serving_profile.warmup.source"),
    ],
)  # fmt: skip
def test_nul_in_a_json_body_is_refused_where_it_is(api: APIClient, acme: Any, path: str, body: Any, where: str) -> None:
    response = api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json() == {"detail": f"Null characters are not allowed. Found one in {where}."}


def test_nul_in_a_multipart_upload_is_refused(api: APIClient) -> None:
    make_version("digits")
    upload = {"model": "digits", "format": "python", "artifact": io.BytesIO(python_artifact()),
              "signature": json.dumps(manifest("digits")["signature"]), "change_note": "new\x00weights"}  # fmt: skip
    response = api.post("/api/v1/versions/", upload, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"detail": "Null characters are not allowed. Found one in change_note."}
    # Escaped inside a JSON text field, the NUL is only there once the field decodes it.
    upload.update(artifact=io.BytesIO(python_artifact()), change_note="", signature='{"inputs": [{"name": "\\u0000"}]}')
    response = api.post("/api/v1/versions/", upload, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"signature": ["Null characters are not allowed."]}
    assert ModelVersion.objects.count() == 1


def test_unknown_references_are_refused_with_the_name(api: APIClient, acme: Any) -> None:
    response = api.post("/api/v1/deployments/", {"version": "0d5a0b52-3c8e-4d53-9f0a-3f8e2f0c1a11"}, format="json")
    assert response.status_code == 400 and "does not exist" in response.json()["version"][0]
    response = api.post("/api/v1/deployments/", {"version": "not-a-uuid"}, format="json")
    assert response.status_code == 400
    response = api.post("/api/v1/api-keys/", {"tenant": "initech", "name": "k"}, format="json")
    assert response.status_code == 400 and "initech" in response.json()["tenant"][0]


@pytest.mark.parametrize("moment", ["2024-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "yesterday"])
def test_audit_times_that_are_no_time_are_refused(api: APIClient, moment: str) -> None:
    for path in ("/api/v1/audit-events/", "/api/v1/audit-events/export/"):
        response = api.get(path, {"since": moment})
        assert response.status_code == 400
        assert response.json() == {"detail": f"since={moment!r} is not an ISO 8601 date-time"}


def test_audit_times_with_any_offset_are_taken_as_utc(api: APIClient) -> None:
    """PostgreSQL takes offsets up to 15:59; ISO 8601 and Python up to 23:59 (the fuzzer's 500)."""
    for moment in ("2383-05-01T02:06:45+22:06", "1139-02-20T03:46:59-19:32", "2999-01-01T00:00:00"):
        assert api.get("/api/v1/audit-events/", {"since": moment}).status_code == 200
        assert api.get("/api/v1/audit-events/export/", {"until": moment}).status_code == 200


def test_an_unknown_api_url_answers_json(api: APIClient) -> None:
    response = api.get("/api/v1/nodes/NOT_A_SLUG/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json" and response.json() == {"detail": "Not found."}


def test_a_versions_parent_may_be_null_and_says_so(api: APIClient) -> None:
    version = make_version("digits")
    assert api.get(f"/api/v1/versions/{version.pk}/").json()["parent"] is None
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert schema["components"]["schemas"]["ModelVersion"]["properties"]["parent"]["nullable"] is True
    assert schema["components"]["schemas"]["MigDevice"]["properties"]["tenant"]["nullable"] is True


def test_every_operation_declares_the_errors_it_can_answer(api: APIClient) -> None:
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path == "/api/v1/node-self/":  # a node's own doors: its credential, no role
                assert codes == {"200", "401"}, codes
                continue
            if path == "/api/v1/node-artifacts/{sha256}/":
                assert codes == {"200", "400", "401", "404"}, codes
                continue
            expected = {"400", "401", "403"} | ({"404"} if "{" in path else set())
            if "requestBody" in operation:
                expected.add("415")
            if method != "get" and not path.endswith(("/dry-run/", "/mig/plan/")):
                expected.add("409")
            assert expected <= codes, f"{method.upper()} {path} declares {sorted(codes)}"
    assert schema["components"]["responses"]["NotFound"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    health = schema["paths"]["/api/v1/nodes/{name}/health-history/"]["get"]["responses"]["200"]
    assert health["content"]["application/json"]["schema"]["$ref"].endswith("/PaginatedNodeHealthChangeList")


def _tar_gz(members: dict[str, int]) -> bytes:
    """A real .tar.gz whose files hold that many zero bytes each (zeros compress ~1000:1)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            archive.addfile(info, io.BytesIO(bytes(size)))
    return buf.getvalue()


def test_an_archive_that_unpacks_over_the_limit_is_refused_at_upload(api: APIClient, settings: Any) -> None:
    settings.ARTIFACT_MAX_UNPACKED_BYTES = 4 * 1024 * 1024
    bomb = _tar_gz({"model.py": 10, "weights.bin": 16 * 1024 * 1024})
    assert len(bomb) < 64 * 1024, "small on the wire"
    make_version("digits")
    upload = {"model": "digits", "format": "python", "artifact": io.BytesIO(bomb),
              "signature": json.dumps(manifest("digits")["signature"])}  # fmt: skip
    response = api.post("/api/v1/versions/", upload, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"detail": "the artifact unpacks to more than the limit of 4194304 bytes "
                               "(APPLIANCE_ARTIFACT_MAX_UNPACKED_BYTES); reached at member 'weights.bin'"}  # fmt: skip
    assert ModelVersion.objects.count() == 1
    upload["artifact"] = io.BytesIO(_tar_gz({"model.py": 10, "weights.bin": 3 * 1024 * 1024}))
    assert api.post("/api/v1/versions/", upload, format="multipart").status_code == 201, "under the limit"


def test_the_limit_is_checked_before_the_data_is_decompressed(settings: Any) -> None:
    """A header announcing a 1 TiB member, and no data after it: refused by the limit, which
    is only possible if nothing past the header was read (else: a truncated archive)."""
    settings.ARTIFACT_MAX_UNPACKED_BYTES = 1024**3
    info = tarfile.TarInfo("weights.bin")
    info.size = 1024**4
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        archive.fileobj.write(info.tobuf())  # type: ignore[union-attr]
    with pytest.raises(ArtifactError, match="unpacks to more than the limit of 1073741824 bytes"):
        check_archive(buf.getvalue())
    settings.ARTIFACT_MAX_UNPACKED_BYTES = 1024**2
    many = _tar_gz({f"f{i}": 0 for i in range(3000)})
    with pytest.raises(ArtifactError, match="reached at member 'f2048'"):
        check_archive(many)  # empty files count their 512-byte entries: 2048 of them fill 1 MiB


def _concrete_paths(api: APIClient) -> dict[str, set[str]]:
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    placeholder = {"{id}": "0d5a0b52-3c8e-4d53-9f0a-3f8e2f0c1a11", "{name}": "node-a", "{slug}": "acme", "{uuid}": "MIG-x"}
    concrete = {}
    for path, operations in schema["paths"].items():
        for token, value in placeholder.items():
            path = path.replace(token, value)
        concrete[path] = {method.upper() for method in operations}
    return concrete


def test_undeclared_methods_answer_405(admin_api: APIClient) -> None:
    """What the fuzzer does not send: a method no operation declares is refused, not a 500."""
    for path, declared in _concrete_paths(admin_api).items():
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - declared:
            response = admin_api.generic(method, path)
            assert response.status_code == 405, f"{method} {path}: {response.status_code}"


def test_options_answers_every_api_url(admin_api: APIClient) -> None:
    for path in _concrete_paths(admin_api):
        assert admin_api.options(path).status_code == 200, path


def test_options_describes_only_the_writes_the_role_may_do(admin_api: APIClient, auditor: Any) -> None:
    from tests.conftest import client_for

    assert "POST" in admin_api.options("/api/v1/nodes/").json().get("actions", {})
    described = client_for(auditor).options("/api/v1/nodes/")
    assert described.status_code == 200 and "POST" not in described.json().get("actions", {})
