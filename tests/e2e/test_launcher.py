"""`make run` (appliance.core.launcher) started by a script in the background stops on
SIGINT, with everything it started: a shell hands a background job SIGINT ignored, and
the launcher must stop on it all the same (it installs its handlers explicitly).

The real launcher, on a database of its own (it migrates it) and free ports, so that it
disturbs neither the test database nor an appliance running on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from appliance.core.process import free_ports, living_processes, port_open
from tests.e2e.fleet import FLEET_MARK, _delete_queues, wait_for

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _marked(mark: str) -> list[tuple[int, bytes]]:
    entry = f"{FLEET_MARK}={mark}".encode()
    return [(p.pid, p.cmdline()) for p in living_processes() if p.pid != os.getpid() and entry in p.environ()]


def test_make_run_started_in_the_background_stops_on_sigint_with_all_it_started(tmp_path: Path) -> None:
    import psycopg
    from django.conf import settings

    database, mark, instance = f"launcher_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, f"{settings.INSTANCE}-launcher"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    api, gateway, http, grpc, metrics = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update({
        FLEET_MARK: mark, "APPLIANCE_DB_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "APPLIANCE_BROKER_URL": settings.CELERY_BROKER_URL, "APPLIANCE_INSTANCE": instance,
        "APPLIANCE_VAR_DIR": str(tmp_path / "var"), "APPLIANCE_API_PORT": str(api),
        "APPLIANCE_GATEWAY_BIND": f"127.0.0.1:{gateway}", "APPLIANCE_DEMO_NODE": "launcher-node",
        "APPLIANCE_DEMO_TRITON_PORTS": f"{http},{grpc},{metrics}", "APPLIANCE_NODE_HEARTBEAT_S": "0.5",
        "APPLIANCE_HEALTH_PERIOD_S": "0.5",
    })  # fmt: skip
    log = tmp_path / "launcher.log"
    # As a script does it: `... &` in a non-interactive shell starts the job with SIGINT ignored.
    shell = subprocess.Popen(["bash", "-c", '"$0" -m appliance.core.launcher > "$1" 2>&1 & echo $!; wait $!; echo "exit $?"',
                              sys.executable, str(log)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert shell.stdout is not None
    try:
        launcher = int(shell.stdout.readline())

        def everything_up() -> bool:
            names = b" ".join(cmdline for _, cmdline in _marked(mark))
            return (
                all(name in names for name in (b"gunicorn", b"celery", b"node_agent", b"run_gateway", b"tritonserver", b"gatewayd"))
                and urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=2).status == 200
                and port_open("127.0.0.1", gateway)
            )

        wait_for("the appliance's processes", everything_up, timeout=300)
        started = _marked(mark)
        os.kill(launcher, signal.SIGINT)
        assert shell.stdout.readline().strip() == "exit 0", log.read_text()[-3000:]
        # The launcher waited for its children; a child it had to kill leaves its own children to their
        # parent-death signal, so they get a short while (a Triton's graceful exit takes a few seconds).
        wait_for("nothing of the appliance left", lambda: not _marked(mark), timeout=30)
        assert len(started) >= 8, started  # the launcher, gunicorn and its workers, worker, beat, agent, Triton, gateway, gatewayd
        assert "stopping the appliance" in log.read_text()
    finally:
        for pid, _ in _marked(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        _delete_queues([f"{instance}.control", f"{instance}.node.launcher-node"])
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
