"""The provisioning playbook for real: a booted Debian 12 test host (systemd-nspawn, its own
network namespace, sshd; tests/provisioning/testhost.py) becomes a CPU serving node in one run
of ansible/node.yml, installing only from the air-gapped bundle the control plane serves
(`manage.py build_bundle`): the agent enrols with a one-time join token made through the REST
API, registers with the zone, site and tags of its inventory, and a model rolled out to it
answers a stock tritonclient through the gateway. A second run changes nothing; the node comes
back healthy after the test host reboots; used, expired and wrong tokens are refused; the runs
are in the audit trail; a revoked node is cut off within seconds.

The control plane is this test's own (worker, beat, gateway of tests/e2e/fleet.py, gunicorn on
the host's side of the veth); RabbitMQ reaches the test host through a forwarder on that
address, as a node's firewall would let it. The database does not: the node's agent has no
database URL and makes every request over the control plane's HTTP agent interface with the
node's own credential (appliance/agentapi). The GPU roles are skipped by the facts
the play reads (no NVIDIA device on the test host's PCI bus), not by a flag."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from django.conf import settings
from django.test import override_settings

from tests.e2e.fleet import Fleet, free_port, wait_for
from tests.e2e.operator import Operator
from tests.provisioning.testhost import ANSIBLE, Forwarder, TestHost, booted, run_playbook
from triton_models.digits import build as digits_build

# A node's first provisioning (bundle, root file system, playbook) took 181 s of the suite's
# 300 on a fresh 2-core machine: room for a slower one.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
NODE = "apl-node1"
MODEL = "prov-digits"  # the e2e modules share one database: a name of its own

if shutil.which("systemd-nspawn") is None or shutil.which("debootstrap") is None:
    pytest.skip("needs systemd-nspawn and debootstrap (make test-host-packages)", allow_module_level=True)


def _run_playbook(site: dict[str, Any], playbook: str = "node.yml") -> tuple[dict[str, int], str, float]:
    return run_playbook(playbook, inventory=site["inventory"], variables=site["vars"], host=NODE, env=site["env"])


@pytest.fixture(scope="module")
def fleet(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet.running(tmp_path_factory.mktemp("provisioning"), {}) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def host(fleet: Fleet) -> Iterator[TestHost]:
    with booted([NODE], fleet.workdir / "hosts") as hosts:
        yield hosts[0]


@pytest.fixture(scope="module")
def site(fleet: Fleet, host: TestHost) -> Iterator[dict[str, Any]]:
    """The control plane as the test host sees it (API, bundle, database, broker on the host's
    side of its veth), a join token, and the inventory of one CPU node."""
    workdir = fleet.workdir
    bundle = workdir / "bundle"
    wheels = Path.home() / ".cache" / "appliance" / "wheelhouse"
    subprocess.run([sys.executable, "manage.py", "build_bundle", "--out", str(bundle), "--wheelhouse", str(wheels)],
                   cwd=ROOT, env=fleet.env, check=True, capture_output=True, timeout=1200)  # fmt: skip
    api_port, bundle_port = free_port(), free_port()
    # Enrolment makes the node a broker user of its own through RabbitMQ's management API.
    env = {**fleet.env, "APPLIANCE_ALLOWED_HOSTS": host.host_side,
           "APPLIANCE_BROKER_ADMIN_URL": "http://guest:guest@127.0.0.1:15672"}  # fmt: skip
    fleet.env = env
    api = fleet.spawn("control-plane-http", [str(Path(sys.executable).parent / "gunicorn"), "appliance.wsgi",
                                             "--bind", f"{host.host_side}:{api_port}", "--workers", "2"])  # fmt: skip
    fleet.spawn("bundle-http", [sys.executable, "-m", "http.server", str(bundle_port), "--bind", host.host_side,
                                "--directory", str(bundle)])  # fmt: skip
    url = f"http://{host.host_side}:{api_port}"
    wait_for("the control plane's HTTP", lambda: urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200,
             procs=[api])  # fmt: skip
    olga = Operator("prov-olga")
    made = olga.post("join-tokens/", {"note": f"{NODE} in the test rack", "ttl_s": 3600})
    token_file = workdir / "join-token"
    token_file.write_text(made["token"] + "\n")
    inventory = workdir / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {
        "cpu_nodes": {"hosts": {NODE: {"ansible_host": host.address}}},
        "nodes": {"children": {"cpu_nodes": {}}},
    }}}))  # fmt: skip
    variables = workdir / "vars.json"
    variables.write_text(json.dumps({
        **host.ansible_vars(),
        "appliance_control_plane_url": url,
        "appliance_bundle_url": f"http://{host.host_side}:{bundle_port}",
        "appliance_join_token_file": str(token_file),
        "appliance_broker_address": f"{host.host_side}:5672",
        "appliance_instance": settings.INSTANCE,
        "appliance_node_zone": "eu-test",
        "appliance_node_site": "rack-4",
        "appliance_node_compliance_tags": ["pci-dss"],
        "appliance_node_address": host.address,
        # The fleet's quick timings (heartbeat, health) and its artifact-free store: the node fetches artifacts.
        "appliance_agent_extra_env": {k.removeprefix("APPLIANCE_"): v for k, v in fleet.env.items()
                                      if k in ("APPLIANCE_NODE_HEARTBEAT_S", "APPLIANCE_HEALTH_PROBE_TIMEOUT_S",
                                               "APPLIANCE_RETIRE_GRACE_S", "APPLIANCE_NODE_STALE_AFTER_S")},
    }))  # fmt: skip
    # The node reaches the control plane's API, its bundle and the broker (its queue); not the database.
    routes = {(host.host_side, 5672): ("127.0.0.1", 5672)}
    try:
        # The operator's API calls this test makes in-process revoke the node there too.
        with Forwarder(routes), override_settings(BROKER_ADMIN_URL=env["APPLIANCE_BROKER_ADMIN_URL"]):
            yield {"url": url, "olga": olga, "token": made, "token_file": token_file, "inventory": inventory,
                   "vars": variables, "env": {**env, "PATH": f"{ANSIBLE.parent}:{env.get('PATH', '')}"}, "times": {}}  # fmt: skip
    finally:  # the node's broker user outlives the test database: never leave one behind
        from appliance.nodes import broker

        with override_settings(BROKER_ADMIN_URL=env["APPLIANCE_BROKER_ADMIN_URL"]):
            broker.withdraw(NODE)


@pytest.fixture(scope="module")
def first_run(site: dict[str, Any]) -> dict[str, Any]:
    counts, output, seconds = _run_playbook(site)
    assert counts["failed"] == 0 and counts["unreachable"] == 0, output[-8000:]
    site["times"]["first run"] = seconds
    return {"counts": counts, "output": output}


def test_the_node_enrols_with_its_zone_site_and_tags(site: dict[str, Any], first_run: dict[str, Any],
                                                     host: TestHost) -> None:  # fmt: skip
    from appliance.audit.models import AuditEvent
    from appliance.nodes.models import JoinToken, Node

    node = Node.objects.get(name=NODE)
    assert (node.zone, node.site, node.compliance_tags) == ("eu-test", "rack-4", ["pci-dss"])
    assert node.credential_hash and node.machine_id == host.ssh("cat /etc/machine-id").stdout.strip()
    assert JoinToken.objects.get(pk=site["token"]["id"]).used_by == node
    # The GPU roles were skipped by the facts (no NVIDIA device), not by a flag.
    assert re.search(r"TASK \[nvidia_driver : Install the driver on GPU hosts\].*?skipping", first_run["output"], re.S)
    events = AuditEvent.objects.filter(target_id=str(node.pk), action="node.create")
    assert events.count() == 1 and events.get().actor == f"enrolment:{NODE}"
    # The credential is on the node, readable by root and the agent's group only; nothing secret in the log.
    mode = host.ssh("stat -c '%a %U %G' /etc/appliance/node-credential").stdout.split()
    assert mode == ["640", "root", "appliance"]
    secret = host.ssh("cat /etc/appliance/node-credential").stdout.strip()
    assert secret.startswith("nc_") and secret not in first_run["output"]
    assert site["token"]["token"] not in first_run["output"]
    # The node reads its tasks as its own broker user (its password: the node's credential), not the appliance's.
    broker_url = host.ssh("cat /etc/appliance/broker-url").stdout.strip()
    assert broker_url == f"amqp://{settings.INSTANCE}.node.{NODE}:{secret}@{host.host_side}:5672/%2F"
    assert broker_url not in first_run["output"]
    # The node holds no key to the control plane's database, and cannot reach it.
    assert host.ssh("test -e /etc/appliance/db-url", check=False).returncode == 1
    assert "APPLIANCE_DB_URL=none" in host.ssh("cat /etc/appliance/agent.env").stdout.splitlines()
    port = settings.DATABASES["default"].get("PORT") or 5432
    probe = host.ssh(f"timeout 5 bash -c '</dev/tcp/{host.host_side}/{port}'", check=False)
    assert probe.returncode != 0, "the database answered the node"


def test_the_node_serves_a_model_rolled_out_through_the_rest_api(site: dict[str, Any], first_run: dict[str, Any],
                                                                  fleet: Fleet) -> None:  # fmt: skip
    from appliance.nodes.models import Node

    olga = site["olga"]
    wait_for("the provisioned node healthy", lambda: Node.objects.get(name=NODE).health == "healthy", timeout=180,
             procs=fleet.procs)  # fmt: skip
    olga.post("models/", {"name": MODEL})
    weights = digits_build.train()[0]
    version = olga.upload(MODEL, digits_build.pack(weights), note="digits on a provisioned node", like="digits")
    assert olga.deploy(version, [NODE], fleet)["state"] == "live"
    olga.post("tenants/", {"slug": "prov-tenant", "name": "Provisioned"})
    olga.post("grants/", {"tenant": "prov-tenant", "model": MODEL})
    key = olga.post("api-keys/", {"tenant": "prov-tenant", "name": "k"})["key"]
    site["key"] = key
    _, x_test, _, y_test = digits_build.split()
    labels = wait_for("an answer through the gateway", lambda: _labels(fleet.gateway, key, x_test[:64]), timeout=60,
                      procs=fleet.procs)  # fmt: skip
    assert (np.array(labels) == y_test[:64]).mean() >= 0.9
    # The agent's writes (registration, the replica it loaded) reached the control plane over its
    # HTTP interface and are audited as the agent's.
    from appliance.audit.models import AuditEvent

    assert AuditEvent.objects.filter(actor=f"agent:{NODE}", origin="agent", target_type="replica").exists()


def _labels(gateway: str, key: str, images: np.ndarray) -> list[int] | None:
    tensor = grpcclient.InferInput("IMAGE", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images.astype(np.float32))
    try:
        result = grpcclient.InferenceServerClient(gateway).infer(MODEL, [tensor], headers={"authorization": f"Bearer {key}"})
    except grpcclient.InferenceServerException as exc:
        if exc.status() == str(grpc.StatusCode.UNAVAILABLE):
            return None  # the gateway's snapshot has not caught up with the rollout yet
        raise
    return [int(label) for label in np.asarray(result.as_numpy("LABEL")).reshape(-1)]


def test_a_second_run_changes_nothing_and_makes_no_second_node(site: dict[str, Any], first_run: dict[str, Any]) -> None:
    from appliance.nodes.models import Node

    counts, output, seconds = _run_playbook(site)
    site["times"]["second run"] = seconds
    assert counts["failed"] == 0 and counts["changed"] == 0, output[-6000:]
    assert Node.objects.filter(name=NODE).count() == 1


def test_a_drift_check_from_the_api_streams_its_events_and_names_a_drifted_node(
        site: dict[str, Any], host: TestHost, fleet: Fleet, settings: Any) -> None:  # fmt: skip
    """The control worker runs node.yml --check --diff through ansible-runner: events stored as
    they come, the final state, and the node named as drifted once its state was edited by hand."""
    from appliance.provisioning.models import ProvisioningRun

    settings.ANSIBLE_INVENTORY, settings.ANSIBLE_EXTRA_VARS = str(site["inventory"]), str(site["vars"])
    olga = site["olga"]

    def check() -> dict[str, Any]:
        run = olga.post("provisioning-runs/", {"kind": "drift_check"})
        seen = wait_for("the run's first events", lambda: ProvisioningRun.objects.get(pk=run["id"]).events.count() > 3,
                        timeout=120, procs=fleet.procs)  # fmt: skip
        assert seen
        return wait_for("the run to end", lambda: (r := olga.get(f"provisioning-runs/{run['id']}/"))["state"]
                        in ("succeeded", "failed") and r, timeout=300, procs=fleet.procs)  # fmt: skip

    clean = check()
    assert clean["state"] == "succeeded" and clean["drifted"] == [], clean["error"] or clean["recap"]
    assert clean["recap"][NODE]["changed"] == 0 and any(e["event"] == "playbook_on_stats" for e in clean["events"])
    env_file = "/etc/appliance/agent.env"
    host.ssh(f"cp {env_file} /root/agent.env.kept && echo APPLIANCE_EDITED_BY_HAND=1 >> {env_file}")
    try:
        drifted = check()
    finally:
        host.ssh(f"mv /root/agent.env.kept {env_file}")
    assert drifted["state"] == "succeeded" and drifted["drifted"] == [NODE], drifted["recap"]
    assert any(e["task"] == "Write the agent's environment" and e["changed"] for e in drifted["events"])
    assert host.ssh(f"grep -c EDITED_BY_HAND {env_file}", check=False).stdout.strip() == "0"


def test_the_agent_comes_back_after_the_host_reboots(site: dict[str, Any], host: TestHost, fleet: Fleet) -> None:
    from appliance.nodes.models import Node

    before = Node.objects.get(name=NODE).last_heartbeat
    host.reboot()
    wait_for("a heartbeat after the reboot", lambda: Node.objects.get(name=NODE).last_heartbeat > before, timeout=120)
    wait_for("the node healthy again", lambda: Node.objects.get(name=NODE).health == "healthy", timeout=180,
             procs=fleet.procs)  # fmt: skip
    assert host.ssh("systemctl is-active appliance-agent").stdout.strip() == "active"
    _, x_test, _, y_test = digits_build.split()
    labels = wait_for("answers again", lambda: _labels(fleet.gateway, site["key"], x_test[:64]), timeout=120,
                      procs=fleet.procs)  # fmt: skip
    assert (np.array(labels) == y_test[:64]).mean() >= 0.9


def test_used_expired_and_wrong_join_tokens_are_refused(site: dict[str, Any], host: TestHost) -> None:
    """The play, on a server whose credential is gone, presenting the spent token: refused with the
    control plane's reason, nothing written. Expired and wrong ones, at the same door over HTTP."""
    from appliance.nodes.models import JoinToken, Node

    host.ssh("mv /etc/appliance/node-credential /root/node-credential.kept")
    try:
        counts, output, _ = _run_playbook(site)
        assert counts["failed"] == 1
        assert f"join token {site['token']['prefix']}" in output and "was already used at" in output
    finally:
        host.ssh("mv /root/node-credential.kept /etc/appliance/node-credential")
    assert Node.objects.filter(name=NODE).count() == 1
    stale = site["olga"].post("join-tokens/", {"ttl_s": 60})
    JoinToken.objects.filter(pk=stale["id"]).update(expires_at=JoinToken.objects.get(pk=stale["id"]).created)
    for token, code, reason in ((stale["token"], 403, " expired at "), ("jt_00000000_wrong", 401, "is not valid")):
        body = json.dumps({"token": token, "name": "apl-node2"}).encode()
        request = urllib.request.Request(f"{site['url']}/api/v1/enrol/", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == code and reason in json.loads(refused.value.read())["detail"]
    assert not Node.objects.filter(name="apl-node2").exists()


def test_a_revoked_node_is_cut_off_within_seconds(site: dict[str, Any], host: TestHost) -> None:
    from appliance.nodes.models import Node

    revoked_at = time.monotonic()
    site["olga"].post(f"nodes/{NODE}/revoke-credential/", {})
    # Its agent learns at its next heartbeat and stops serving; its restarts are refused at registration.
    wait_for("the agent to stop", lambda: host.ssh("systemctl is-active appliance-agent", check=False).stdout.strip()
             != "active", timeout=30)  # fmt: skip
    stopped_after = time.monotonic() - revoked_at
    assert stopped_after < 15, stopped_after
    assert Node.objects.get(name=NODE).admin_state == "revoked"
    journal = host.ssh("journalctl -u appliance-agent --no-pager -n 200", check=False).stdout
    # Whichever came first: its heartbeat refused, or the broker closing the connection of the node's deleted
    # broker user (a reconnection is then refused).
    assert "was revoked or removed from the control plane" in journal or "ACCESS_REFUSED" in journal, journal
    # Its broker user went with its credential.
    request = urllib.request.Request(f"http://127.0.0.1:15672/api/users/{settings.INSTANCE}.node.{NODE}",
                                     headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})  # guest:guest  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(request, timeout=10)
    assert gone.value.code == 404
    print(f"provisioning times: {site['times']}; revoked node stopped serving after {stopped_after:.1f} s")
