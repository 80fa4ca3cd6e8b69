"""The control-plane playbook for real: a booted Debian 12 test host (tests/provisioning/testhost.py)
becomes the control plane in one run of ansible/control_plane.yml — PostgreSQL with an owner
role that migrates and an unprivileged runtime role, RabbitMQ with its management API on
loopback, Redis, gunicorn on loopback behind nginx terminating TLS, Celery worker and beat, and
the gateway (native front and Python plane, TLS) — installing the appliance from the bundle
(`manage.py build_bundle`) and the OS packages from the site's mirror (here: the packages'
.debs in the image's apt cache; the host has no route out). A second run changes nothing.

What is checked from outside, as an operator would: the API answers over TLS with the CA that
signed the host's certificate, an account made with `manage.py create_account` on the host
calls it, the gateway answers a stock tritonclient over TLS, and nothing but nginx and the
gateway listens beyond loopback (not gunicorn, not the broker's management API)."""

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

import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.certs import make_pki
from tests.provisioning.testhost import TestHost, booted, run_playbook

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CP = "apl-cp1"
# What the control_plane and gateway roles install from the OS archives (python3-apt: Ansible's apt module).
MIRRORED = ("postgresql", "rabbitmq-server", "redis-server", "nginx", "python3-venv", "python3-apt",
            "libgrpc++1.51", "libhiredis0.14", "libssl3")  # fmt: skip

if shutil.which("systemd-nspawn") is None or shutil.which("debootstrap") is None:
    pytest.skip("needs systemd-nspawn and debootstrap (make test-host-packages)", allow_module_level=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("control-plane")


@pytest.fixture(scope="module")
def host(workdir: Path) -> Iterator[TestHost]:
    with booted([CP], workdir / "hosts", first_index=232, mirrored=MIRRORED) as hosts:
        yield hosts[0]


@pytest.fixture(scope="module")
def site(workdir: Path, host: TestHost) -> dict[str, Any]:
    bundle = workdir / "bundle"
    subprocess.run([sys.executable, "manage.py", "build_bundle", "--out", str(bundle), "--wheelhouse",
                    str(Path.home() / ".cache" / "appliance" / "wheelhouse")],
                   cwd=ROOT, check=True, capture_output=True, timeout=1200)  # fmt: skip
    pki = make_pki(workdir / "pki", addresses=(host.address,))
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
    return {"inventory": inventory, "vars": variables, "ca": pki["ca"], "url": f"https://{host.address}", "times": {}}


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


def test_the_control_plane_comes_up_in_one_run(site: dict[str, Any], first_run: dict[str, Any], host: TestHost) -> None:
    for unit in ("postgresql", "rabbitmq-server", "redis-server", "nginx", "appliance-web", "appliance-worker",
                 "appliance-beat", "appliance-gateway"):  # fmt: skip
        state = host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip()
        assert state == "active", (unit, state, host.ssh(f"journalctl -u {unit} --no-pager -n 30", check=False).stdout)
    # The API over TLS, with the CA that signed the host's certificate; an account made on the host calls it.
    assert _https(site, "/healthz")[0] == 200
    made = host.ssh("cd /opt/appliance/release && set -a && . /etc/appliance/control-plane.env && set +a && "
                    "sudo -E -u appliance /opt/appliance/venv/bin/python manage.py create_account olga --role operator")
    token = re.search(r"^api token: (\S+)$", made.stdout, re.M)
    assert token is not None, made.stdout
    status, nodes = _https(site, "/api/v1/nodes/", token.group(1))
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
