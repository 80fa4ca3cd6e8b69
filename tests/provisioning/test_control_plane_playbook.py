"""The control-plane playbook for real, and a node enrolled to it: two booted Debian 12 test hosts
(tests/provisioning/testhost.py). The first becomes the control plane in one run of
ansible/control_plane.yml — PostgreSQL with an owner
role that migrates and an unprivileged runtime role, RabbitMQ with its management API on
loopback, Redis, gunicorn on loopback behind nginx terminating TLS, Celery worker and beat, and
the gateway (native front and Python plane, TLS) — installing the appliance from the bundle
(`manage.py build_bundle`) and the OS packages from the site's mirror (here: the packages'
.debs in the image's apt cache; the host has no route out). A second run changes nothing.

What is checked from outside, as an operator would: the API answers over TLS with the CA that
signed the host's certificate, an account made with `manage.py create_account` on the host
calls it, the gateway answers a stock tritonclient over TLS, and nothing but nginx, AMQP and
the gateway listens beyond loopback (not gunicorn, not the broker's management API).

The second host becomes a CPU node of that control plane with ansible/node.yml: it installs
from the bundle the control plane serves (`/bundle/` behind nginx), enrols with a join token
made through the control plane's REST API, registers with its zone, site and tags, reads its
queue as its own broker user, and a model rolled out through that REST API answers a stock
tritonclient through the control plane's gateway. The two hosts reach each other through
forwarders on their hosts' sides (as routed networks would): the node sees the control plane
at its host side (443, 5672), the control plane sees the node's Triton at its own."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.e2e.certs import make_pki
from tests.e2e.fleet import wait_for
from tests.factories import manifest
from tests.provisioning.testhost import Forwarder, TestHost, booted, run_playbook
from triton_models.digits import build as digits_build

# A site's first provisioning (its bundle's wheelhouse, the host's root file system with its
# mirror, and the whole playbook) passes the suite's 5 minutes on a fresh 2-core machine: the
# first test's setup took more than 300 s on one with AVX2 only and empty caches.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CP = "apl-cp1"
NODE = "apl-node2"
MODEL = "cp-digits"
# What the control_plane and gateway roles install from the OS archives (python3-apt: Ansible's apt module).
MIRRORED = ("postgresql", "rabbitmq-server", "redis-server", "nginx", "python3-venv", "python3-apt",
            "libgrpc++1.51", "libhiredis0.14", "libssl3")  # fmt: skip

if shutil.which("systemd-nspawn") is None or shutil.which("debootstrap") is None:
    pytest.skip("needs systemd-nspawn and debootstrap (make test-host-packages)", allow_module_level=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("control-plane")


@pytest.fixture(scope="module")
def hosts(workdir: Path) -> Iterator[list[TestHost]]:
    """The control plane's host and the node's (one image: the node leaves the mirrored .debs alone)."""
    with booted([CP, NODE], workdir / "hosts", first_index=232, mirrored=MIRRORED) as booted_hosts:
        yield booted_hosts


@pytest.fixture(scope="module")
def host(hosts: list[TestHost]) -> TestHost:
    return hosts[0]


@pytest.fixture(scope="module")
def node_host(hosts: list[TestHost]) -> TestHost:
    return hosts[1]


@pytest.fixture(scope="module")
def site(workdir: Path, host: TestHost, node_host: TestHost) -> dict[str, Any]:
    bundle = workdir / "bundle"
    subprocess.run([sys.executable, "manage.py", "build_bundle", "--out", str(bundle), "--wheelhouse",
                    str(Path.home() / ".cache" / "appliance" / "wheelhouse")],
                   cwd=ROOT, check=True, capture_output=True, timeout=1200)  # fmt: skip
    # The node reaches the control plane at its own host side (forwarded): the certificate names both.
    pki = make_pki(workdir / "pki", addresses=(host.address, node_host.host_side))
    inventory = workdir / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {
        "control_plane": {"hosts": {CP: {"ansible_host": host.address}}},
        "gateway": {"hosts": {CP: {}}},
    }}}))  # fmt: skip
    variables = workdir / "vars.json"
    variables.write_text(json.dumps({
        **host.ansible_vars(),
        "appliance_bundle_dir": str(bundle),
        "appliance_public_name": host.address,
        "appliance_public_aliases": [node_host.host_side],
        "appliance_control_plane_url": f"https://{host.address}",
        "appliance_tls_cert_file": str(pki["server"]),
        "appliance_tls_key": pki["server_key"].read_text(),
        "appliance_gateway_tls_cert_file": str(pki["server"]),
        "appliance_gateway_tls_key": pki["server_key"].read_text(),
        # (a test's own secrets: an operator keeps them in Ansible Vault)
        "appliance_secret_key": secrets.token_urlsafe(48),
        "appliance_db_password": secrets.token_urlsafe(16),
        "appliance_broker_password": secrets.token_urlsafe(16),
        "appliance_broker_admin_password": secrets.token_urlsafe(16),
    }))  # fmt: skip
    return {"inventory": inventory, "vars": variables, "ca": pki["ca"], "url": f"https://{host.address}", "times": {},
            "bundle": bundle}  # fmt: skip


def _run_playbook(site: dict[str, Any]) -> tuple[dict[str, int], str, float]:
    return run_playbook("control_plane.yml", inventory=site["inventory"], variables=site["vars"], host=CP)


@pytest.fixture(scope="module")
def first_run(site: dict[str, Any], host: TestHost) -> dict[str, Any]:
    counts, output, seconds = _run_playbook(site)
    assert counts["failed"] == 0 and counts["unreachable"] == 0, output[-8000:]
    site["times"]["first run"] = seconds
    return {"counts": counts, "output": output}


def _https(site: dict[str, Any], path: str, token: str = "") -> tuple[int, Any]:
    request = urllib.request.Request(f"{site['url']}{path}", headers={"Authorization": f"Bearer {token}"} if token else {})
    context = ssl.create_default_context(cafile=str(site["ca"]))
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def admin_token(first_run: dict[str, Any], host: TestHost) -> str:
    """An account made on the control plane's host, as its operator would, and its REST token."""
    made = host.ssh("cd /opt/appliance/release && set -a && . /etc/appliance/control-plane.env && set +a && "
                    "sudo -E -u appliance /opt/appliance/venv/bin/python manage.py create_account olga --role admin")
    token = re.search(r"^api token: (\S+)$", made.stdout, re.M)
    assert token is not None, made.stdout
    return token.group(1)


def test_the_control_plane_comes_up_in_one_run(site: dict[str, Any], first_run: dict[str, Any], host: TestHost,
                                               admin_token: str) -> None:  # fmt: skip
    for unit in ("postgresql", "rabbitmq-server", "redis-server", "nginx", "appliance-web", "appliance-worker",
                 "appliance-beat", "appliance-gateway"):  # fmt: skip
        state = host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip()
        assert state == "active", (unit, state, host.ssh(f"journalctl -u {unit} --no-pager -n 30", check=False).stdout)
    # The API over TLS, with the CA that signed the host's certificate; an account made on the host calls it.
    assert _https(site, "/healthz")[0] == 200
    status, nodes = _https(site, "/api/v1/nodes/", admin_token)
    assert status == 200 and nodes["results"] == []
    assert _https(site, "/api/v1/nodes/")[0] == 401
    # The gateway answers a stock tritonclient over TLS.
    gateway = grpcclient.InferenceServerClient(f"{host.address}:8001", ssl=True,
                                               root_certificates=str(site["ca"]))  # fmt: skip
    assert gateway.is_server_live()
    # Beyond loopback only sshd, nginx (443), the broker's AMQP port (5672: each node as its own user, its
    # queue only) and the gateway (8001, 8101) listen: not gunicorn, the database, the broker's management
    # API or Erlang distribution, or Redis.
    listening = host.ssh("ss -Hltn").stdout
    exposed = {int(m.group(2)) for m in re.finditer(r"\s(\S+):(\d+)\s", listening)
               if not m.group(1).startswith(("127.", "[::1]", "[::ffff:127."))}  # fmt: skip
    assert exposed <= {22, 443, 5672, 8001, 8101}, listening
    secret_values = json.loads(site["vars"].read_text())
    for name in ("appliance_secret_key", "appliance_db_password", "appliance_broker_password"):
        assert secret_values[name] not in first_run["output"], name


def test_a_second_run_changes_nothing(site: dict[str, Any], first_run: dict[str, Any]) -> None:
    counts, output, seconds = _run_playbook(site)
    site["times"]["second run"] = seconds
    assert counts["failed"] == 0 and counts["changed"] == 0, output[-8000:]
    print(f"control-plane provisioning times: {site['times']}")


class _Api:
    """The control plane's REST API over TLS, as an operator's script calls it."""

    def __init__(self, site: dict[str, Any], token: str) -> None:
        self.base, self.ca = f"{site['url']}/api/v1/", str(site["ca"])
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: dict[str, Any] | None = None, files: dict[str, Any] | None = None) -> Any:
        response = (self.session.post(self.base + path, data=body, files=files, verify=self.ca, timeout=60) if files
                    else self.session.post(self.base + path, json=body or {}, verify=self.ca, timeout=60))  # fmt: skip
        assert response.status_code in (200, 201, 202), (path, response.status_code, response.text[:2000])
        return response.json()

    def get(self, path: str) -> Any:
        response = self.session.get(self.base + path, verify=self.ca, timeout=60)
        assert response.status_code == 200, (path, response.status_code, response.text[:2000])
        return response.json()


@pytest.fixture(scope="module")
def joined(site: dict[str, Any], first_run: dict[str, Any], host: TestHost, node_host: TestHost, admin_token: str,
           workdir: Path) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The second host provisioned as a CPU node of the first, through forwarders between the two."""
    api = _Api(site, admin_token)
    made = api.post("join-tokens/", {"note": f"{NODE} in rack 9", "ttl_s": 3600})
    token_file = workdir / "join-token"
    token_file.write_text(made["token"] + "\n")
    inventory = workdir / "node-inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {
        "cpu_nodes": {"hosts": {NODE: {"ansible_host": node_host.address}}},
        "nodes": {"children": {"cpu_nodes": {}}},
    }}}))  # fmt: skip
    variables = workdir / "node-vars.json"
    variables.write_text(json.dumps({
        **node_host.ansible_vars(),
        "appliance_control_plane_url": f"https://{node_host.host_side}",
        "appliance_ca_file": str(site["ca"]),
        "appliance_join_token_file": str(token_file),
        "appliance_broker_address": f"{node_host.host_side}:5672",
        "appliance_node_zone": "eu-test",
        "appliance_node_site": "rack-9",
        "appliance_node_compliance_tags": ["hipaa"],
        # Triton listens on the node's address; the control plane reaches it at its own host side (forwarded below).
        "appliance_node_address": node_host.address,
        "appliance_node_advertise_address": host.host_side,
    }))  # fmt: skip
    routes = {(node_host.host_side, port): (host.address, port) for port in (443, 5672)}
    routes |= {(host.host_side, port): (node_host.address, port) for port in (8200, 8201, 8202)}
    with Forwarder(routes):
        counts, output, seconds = run_playbook("node.yml", inventory=inventory, variables=variables, host=NODE)
        assert counts["failed"] == 0 and counts["unreachable"] == 0, output[-8000:]
        site["times"]["node first run"] = seconds
        yield {"api": api, "token": made, "output": output}


def test_a_node_enrols_to_it_and_serves_a_model_rolled_out_through_its_api(site: dict[str, Any], joined: dict[str, Any],
                                                                          host: TestHost, node_host: TestHost) -> None:  # fmt: skip
    api = joined["api"]
    node = api.get(f"nodes/{NODE}/")
    assert (node["zone"], node["site"], node["compliance_tags"]) == ("eu-test", "rack-9", ["hipaa"])
    assert api.get(f"join-tokens/{joined['token']['id']}/")["state"] == "used"
    # The node holds its credential and its own broker user, nothing of the control plane's.
    broker_url = node_host.ssh("cat /etc/appliance/broker-url").stdout.strip()
    assert broker_url.startswith(f"amqp://appliance.node.{NODE}:nc_") and "APPLIANCE_DB_URL=none" in node_host.ssh(
        "cat /etc/appliance/agent.env").stdout  # fmt: skip
    wait_for("the node healthy at the control plane", lambda: api.get(f"nodes/{NODE}/")["health"] == "healthy",
             timeout=180)  # fmt: skip
    api.post("models/", {"name": MODEL})
    spec = manifest("digits")
    version = api.post("versions/", {"model": MODEL, "format": spec["format"], "signature": json.dumps(spec["signature"]),
                                     "max_batch_size": spec["max_batch_size"], "decoupled": spec["decoupled"],
                                     "change_note": "digits on a provisioned node"},
                       files={"artifact": ("digits.tar.gz", digits_build.pack(digits_build.train()[0]))})  # fmt: skip
    deployment = api.post("deployments/", {"version": version["id"], "nodes": [NODE]})
    state = wait_for("the rollout to end", lambda: (d := api.get(f"deployments/{deployment['id']}/"))["state"]
                     in ("live", "failed", "rolled_back") and d, timeout=240)  # fmt: skip
    assert state["state"] == "live", state
    api.post("tenants/", {"slug": "cp-tenant", "name": "Provisioned"})
    api.post("grants/", {"tenant": "cp-tenant", "model": MODEL})
    key = api.post("api-keys/", {"tenant": "cp-tenant", "name": "k"})["key"]
    _, x_test, _, y_test = digits_build.split()
    gateway = grpcclient.InferenceServerClient(f"{host.address}:8001", ssl=True, root_certificates=str(site["ca"]))
    tensor = grpcclient.InferInput("IMAGE", [64, *x_test.shape[1:]], "FP32")
    tensor.set_data_from_numpy(x_test[:64].astype(np.float32))

    def answer() -> Any:
        try:
            return gateway.infer(MODEL, [tensor], headers={"authorization": f"Bearer {key}"})
        except grpcclient.InferenceServerException as exc:
            if exc.status() == str(grpc.StatusCode.UNAVAILABLE):
                return None  # the gateway's snapshot has not caught up with the rollout yet
            raise

    result = wait_for("an answer through the control plane's gateway", answer, timeout=60)
    labels = np.asarray(result.as_numpy("LABEL")).reshape(-1)
    assert (labels == y_test[:64]).mean() >= 0.9
    print(f"two-host provisioning times: {site['times']}")

