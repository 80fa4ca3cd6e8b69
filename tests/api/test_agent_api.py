"""The node agent's interface to the control plane (appliance/agentapi): a provisioned node's
agent holds no database URL and makes every request as `POST /api/v1/agent/<op>/` with its own
credential. Each operation acts for the calling node only; a wrong or revoked credential, an
unknown operation, arguments it does not take and another node's objects are refused with the
status the schema declares, and change nothing. The agent's own client (agent/control.py)
speaks it over real HTTP to a server in this process here; the provisioned node in tests/provisioning
runs a whole rollout through it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from appliance.audit.context import audit_context
from appliance.audit.models import AuditEvent
from appliance.core.engine_gauges import EngineReading
from appliance.core.errors import DomainError
from appliance.metrics.models import EnginePoint
from appliance.nodes import services
from appliance.nodes.choices import AdminState
from appliance.nodes.models import Node
from appliance.rollouts import services as rollouts
from appliance.rollouts.choices import ReplicaState
from appliance.rollouts.models import Replica
from tests.factories import make_node, make_version
from tests.http_server import http_server

MACHINE = "0123456789abcdef0123456789abcdef"


def _enrolled(name: str) -> tuple[Node, str]:
    _, token = services.join_token_create(ttl_s=600)
    enrolled = services.node_enrol(token=token, name=name, zone="eu-fra", site="fra-1", compliance_tags=[],
                                   machine_id=MACHINE)  # fmt: skip
    return enrolled.node, enrolled.credential


def _call(op: str, body: Any, credential: str = "") -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {credential}"} if credential else {}
    return Client().post(f"/api/v1/agent/{op}/", body, content_type="application/json", **headers)


def _placed(node: Node, model: str = "digits") -> Replica:
    version = make_version(model)
    deployment = rollouts.deployment_create(version=version, nodes=[node])
    return deployment.replicas.get()


@pytest.mark.django_db
def test_a_node_s_requests_act_for_that_node_only(django_capture_on_commit_callbacks: Any) -> None:
    node, credential = _enrolled("gpu-07")
    other = make_node("gpu-08")
    with django_capture_on_commit_callbacks(execute=False):
        mine, theirs = _placed(node), _placed(other, "other")
    register = {"name": "gpu-07", "zone": "eu-fra", "grpc_address": "10.0.0.7:8001", "http_address": "10.0.0.7:8000",
                "metrics_address": "10.0.0.7:8002", "backends": ["python"]}  # fmt: skip
    answer = _call("register", register, credential)
    assert answer.status_code == 200 and answer.json() == {"result": {"node_id": str(node.pk)}}
    assert Node.objects.get(pk=node.pk).grpc_address == "10.0.0.7:8001"
    # Under another node's name: refused, and that node is untouched.
    refused = _call("register", {**register, "name": "gpu-08"}, credential)
    assert refused.status_code == 403 and "gpu-07" in refused.json()["detail"]
    assert Node.objects.get(pk=other.pk).grpc_address == "127.0.0.1:1"

    claimed = _call("replica_claim", {"replica_id": str(mine.pk)}, credential).json()["result"]
    assert claimed["id"] == str(mine.pk) and claimed["version"]["model"]["name"] == "digits"
    assert Replica.objects.get(pk=mine.pk).state == ReplicaState.LOADING
    config = _call("triton_config", {"version_id": claimed["version"]["id"], "versions": [1], "backends": ["python"]},
                   credential).json()["result"]  # fmt: skip
    assert 'name: "digits"' in config and 'backend: "python"' in config
    resident = _call("resident_versions", {"model_id": claimed["version"]["model"]["id"]}, credential).json()
    assert [v["id"] for v in resident["result"]] == [claimed["version"]["id"]]
    assert _call("replica_mark_live", {"replica_id": str(mine.pk)}, credential).json() == {"result": True}
    assert Replica.objects.get(pk=mine.pk).state == ReplicaState.LIVE
    assert AuditEvent.objects.filter(target_id=str(mine.pk), actor="agent:gpu-07", origin="agent").exists()

    # Another node's replica, version and model: refused, nothing claimed or failed.
    for op, body in (("replica_claim", {"replica_id": str(theirs.pk)}),
                     ("replica_mark_failed", {"replica_id": str(theirs.pk), "error": "boom"}),
                     ("triton_config", {"version_id": str(theirs.deployment.version_id), "versions": [1],
                                        "backends": ["python"]}),
                     ("warmup_files", {"version_id": str(theirs.deployment.version_id)}),
                     ("model_name", {"model_id": str(theirs.deployment.version.model_id)})):  # fmt: skip
        response = _call(op, body, credential)
        assert response.status_code == 403, (op, response.content)
    assert Replica.objects.get(pk=theirs.pk).state == ReplicaState.PENDING
    # What the node reads of itself is its own.
    assert _call("live_versions", {}, credential).json()["result"][0]["id"] == claimed["version"]["id"]
    assert _call("resident_models", {}, credential).json()["result"] == {
        "live": {"digits": [claimed["version"]["model"]["id"], ["1"]]}, "loading": []}  # fmt: skip


@pytest.mark.django_db
def test_bad_requests_are_refused_with_a_clear_status_and_change_nothing() -> None:
    node, credential = _enrolled("gpu-07")
    assert _call("heartbeat", {"triton_ready": True}).status_code == 401
    assert _call("heartbeat", {"triton_ready": True}, "nc_not-a-credential").status_code == 401
    unknown = _call("drop_tables", {}, credential)
    assert unknown.status_code == 404 and "drop_tables" in unknown.json()["detail"]
    extra = _call("heartbeat", {"triton_ready": True, "node_id": "someone-else"}, credential)
    assert extra.status_code == 400 and "node_id" in extra.json()["detail"]
    assert _call("heartbeat", {}, credential).status_code == 400
    assert _call("heartbeat", ["not", "an", "object"], credential).status_code == 400
    leaked = _call("register", {"name": "gpu-07", "credential": credential}, credential)
    assert leaked.status_code == 400 and "Authorization" in leaked.json()["detail"]
    missing = _call("replica_claim", {"replica_id": "00000000-0000-0000-0000-000000000000"}, credential)
    assert missing.status_code == 404
    assert _call("set_admin_state", {"admin_state": "exploded"}, credential).status_code == 400
    for gpus in ([{"bogus": 1}], "not a list", [["a list"]]):
        shaped = _call("report_inventory", {"gpus": gpus}, credential)
        assert shaped.status_code == 400 and "report_inventory" in shaped.json()["detail"], (gpus, shaped.content)
    good = {"device": "", "model": "chat", "version": 1, "kv_cache_usage": 0.5, "running": 2, "waiting": 0,
            "preemptions": 0}  # fmt: skip
    for readings, why in (([{**good, "kv_cache_usage": 1.5}], "kv_cache_usage"), ([{**good, "version": "1"}], "version"),
                          ([{**good, "preemptions": -1}], "preemptions"), ([{**good, "preemptions": 0.5}], "preemptions"),
                          ([{**good, "waiting": True}], "waiting"), ([{**good, "model": ""}], "model"),
                          ([{**good, "node": "gpu-08"}], "exactly"), ([good, ["a list"]], "exactly"),
                          ([{**good, "version": 2**31}], "version"), ([{**good, "model": "chat\x00"}], "model"),
                          ([{**good, "device": "MIG-" + "x" * 61}], "device"), ([{**good, "running": 1e300}], "running"),
                          ("not a list", "list")):  # fmt: skip
        refused = _call("report_engines", {"readings": readings}, credential)
        assert refused.status_code == 400 and why in refused.json()["detail"], (readings, refused.content)
    assert not EnginePoint.objects.exists(), "a refused report records nothing, not even its good readings"
    assert Node.objects.get(pk=node.pk).last_heartbeat is None and Node.objects.get(pk=node.pk).admin_state == "active"
    assert _call("heartbeat", {"triton_ready": True}, credential).json() == {"result": True}


@pytest.mark.django_db
def test_a_node_reports_where_each_mig_slice_s_triton_listens_and_its_metrics_endpoint() -> None:
    from appliance.nodes.models import Gpu, MigDevice

    node, credential = _enrolled("gpu-09")
    gpu = Gpu.objects.create(node=node, index=0, uuid="GPU-9", product="NVIDIA H100", memory_mib=81_559, mig_enabled=True)
    slice_ = MigDevice.objects.create(gpu=gpu, uuid="MIG-a", profile="1g.10gb", start=0, size=1, gpu_instance_id=9,
                                      memory_mib=9_984)  # fmt: skip
    for body in ({"addresses": {"MIG-a": "127.0.0.1:9001"}, "metrics": ["127.0.0.1:9002"]},
                 {"addresses": {"MIG-a": 9001}}, {"addresses": {"MIG-a": "127.0.0.1:9001"}, "metrics": {"MIG-a": "x" * 256}}):
        refused = _call("set_mig_endpoints", body, credential)
        assert refused.status_code == 400 and "set_mig_endpoints" in refused.json()["detail"], (body, refused.content)
        assert MigDevice.objects.get(pk=slice_.pk).grpc_address == "", "a refused report changes nothing"
    done = _call("set_mig_endpoints", {"addresses": {"MIG-a": "127.0.0.1:9001", "MIG-not-mine": "10.0.0.9:1"},
                                       "metrics": {"MIG-a": "127.0.0.1:9002"}}, credential)  # fmt: skip
    assert done.status_code == 200, done.content
    assert MigDevice.objects.values_list("grpc_address", "metrics_address").get(pk=slice_.pk) == (
        "127.0.0.1:9001", "127.0.0.1:9002")


@pytest.mark.django_db
def test_a_revoked_node_is_refused_at_its_next_request() -> None:
    node, credential = _enrolled("gpu-07")
    assert _call("heartbeat", {"triton_ready": True}, credential).status_code == 200
    services.node_revoke_credential(node=node)
    refused = _call("heartbeat", {"triton_ready": True}, credential)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert Node.objects.get(pk=node.pk).admin_state == AdminState.REVOKED


@pytest.mark.django_db
def test_the_agent_s_client_speaks_it_over_http(django_capture_on_commit_callbacks: Any) -> None:
    """agent/control.py against a real HTTP server: records built from the JSON, the node's
    own objects only, a revoked node's heartbeat answered False (the agent then stops). (That
    a provisioned node's agent runs with no database at all: tests/provisioning.)"""
    from appliance.agent import control

    node, credential = _enrolled("gpu-07")
    with django_capture_on_commit_callbacks(execute=False):
        mine, theirs = _placed(node), _placed(make_node("gpu-08"), "other")
    with http_server() as url:
        control.connect(url=url, credential=credential)
        try:
            node_id = control.node_register(name="gpu-07", zone="eu-fra", grpc_address="10.0.0.7:8001",
                                            http_address="10.0.0.7:8000", metrics_address="10.0.0.7:8002",
                                            backends=("python",))  # fmt: skip
            assert node_id == str(node.pk)
            replica = control.replica_claim(replica_id=str(mine.pk))
            assert replica is not None and str(replica.version) == "digits:1"
            assert replica.version.signature == mine.deployment.version.signature
            assert control.resident_versions(model_id=replica.version.model_id) == [replica.version]
            assert control.model_name(model_id=replica.version.model_id) == "digits"
            with django_capture_on_commit_callbacks(execute=False), audit_context(correlation_id="task-4711"):
                assert control.replica_mark_live(replica=replica) is True
            assert Replica.objects.get(pk=mine.pk).state == ReplicaState.LIVE
            # The node is the actor; the correlation id of the task it ran links the write to its cause.
            (live,) = [e for e in AuditEvent.objects.filter(target_id=str(mine.pk), action="replica.update")
                       if e.changes.get("state", [None, None])[1] == "live"]  # fmt: skip
            assert (live.actor, live.origin, live.correlation_id) == ("agent:gpu-07", "agent", "task-4711")
            assert control.node_heartbeat(triton_ready=True) is True
            control.node_report_engines(readings=[EngineReading(device="MIG-1", model="chat", version=2,
                                                                kv_cache_usage=0.25, running=3, waiting=1,
                                                                preemptions=4)])  # fmt: skip
            engine = EnginePoint.objects.get()
            assert (engine.node, engine.device, engine.model, engine.version, engine.samples, engine.kv_usage_max,
                    engine.preemptions) == ("gpu-07", "MIG-1", "chat", 2, 1, 0.25, 4), "filed under the calling node"
            with pytest.raises(control.Refused):
                control.replica_claim(replica_id=str(theirs.pk))
            with pytest.raises(DomainError):
                control.node_set_admin_state(admin_state="revoked")
            services.node_revoke_credential(node=Node.objects.get(pk=node.pk))
            assert control.node_heartbeat(triton_ready=True) is False
        finally:
            control.connect()
