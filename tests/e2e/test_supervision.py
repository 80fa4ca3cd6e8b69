"""Supervision end to end (appliance/core/process.py at work): a native front SIGKILLed
under load is started again by its gateway within seconds, and a SIGKILLed Triton is
restarted by its agent only after its Python-backend stubs are gone. The fleet itself
asserts, when it stops, that nothing it started outlives it."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from appliance.core.process import living_processes
from tests.e2e.fleet import Fleet, wait_for
from tests.e2e.load import IMAGES, Load
from tests.e2e.operator import Operator
from triton_models.digits import build as digits_build

pytestmark = [pytest.mark.e2e]

NODE = "sv-node"
MODEL = "digits-sv"


@pytest.fixture(scope="module")
def fleet(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet.running(tmp_path_factory.mktemp("supervision"), {NODE: ()}) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def world(fleet: Fleet) -> dict[str, Any]:
    sven = Operator("sven")
    sven.post("models/", {"name": MODEL})
    version = sven.upload(MODEL, digits_build.pack(digits_build.train()[0]), like="digits")
    assert sven.deploy(version, [NODE], fleet)["state"] == "live"
    sven.post("tenants/", {"slug": "sv", "name": "Supervised"})
    sven.post("grants/", {"tenant": "sv", "model": MODEL})
    key = sven.post("api-keys/", {"tenant": "sv", "name": "load"})["key"]
    wait_for("the gateway to serve the model", lambda: _answers(fleet.gateway, key), timeout=30, procs=fleet.procs)
    return {"key": key}


def _answers(address: str, key: str) -> bool:
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGES[:1].astype(np.float32))
    try:
        grpcclient.InferenceServerClient(address).infer(MODEL, [tensor], headers={"authorization": f"Bearer {key}"})
        return True
    except grpcclient.InferenceServerException:
        return False


def test_a_killed_native_front_is_started_again_and_clients_recover_within_seconds(fleet: Fleet, world: dict[str, Any]) -> None:
    gateway = next(p for p in fleet.procs if p.name == "gateway")
    victim = fleet.native_front_pid(gateway)
    with Load(fleet.gateway, world["key"], threads=4, model=MODEL) as load:
        wait_for("100 answers", lambda: len(load.results) >= 100, timeout=60)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def answered_since_last_failure() -> int:
            timeline = list(load.timeline)
            last_failure = max((t for t, ok in timeline if not ok), default=killed)
            return sum(1 for t, ok in timeline if t > last_failure)

        # Every request answered for a while after the last failure: the outage is over.
        wait_for("300 answers in a row after the kill", lambda: answered_since_last_failure() >= 300, timeout=60)
    timeline = [(t - killed, ok) for t, ok in load.timeline]
    failed = [t for t, ok in timeline if not ok]
    outage = max(failed, default=0.0)
    print(f"\ngatewayd SIGKILLed under 4 stock clients: {len(failed)} of {len(timeline)} requests failed, "
          f"the last {outage:.2f} s after the kill; {sum(1 for t, ok in timeline if t > outage)} answered after it")  # fmt: skip
    assert all(t >= 0 for t in failed), "nothing failed before the kill"
    assert outage < 3.0, f"clients failed for {outage:.2f} s"
    assert all("UNAVAILABLE" in detail for detail in load.failures()), load.failures()[:3]
    assert gateway.popen.poll() is None, "the gateway's Python plane stayed up"
    assert fleet.native_front_pid(gateway) != victim


def test_a_killed_triton_is_restarted_only_after_its_backend_stubs_are_gone(fleet: Fleet, world: dict[str, Any]) -> None:
    old = fleet.triton_pid(NODE)
    stubs = [p.pid for p in living_processes() if p.pgid == old and b"triton_python_backend_stub" in p.cmdline()]
    assert stubs, "the Python-backend model runs in stub processes in Triton's own process group"
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{fleet.node_ports[NODE]['grpc']}")
    version = str(next(m.version for m in direct.get_model_repository_index().models if m.name == MODEL))
    os.kill(old, signal.SIGKILL)
    wait_for("a new Triton on the node", lambda: fleet.triton_pid(NODE) != old, timeout=60, procs=fleet.procs)
    # The stubs would live on for many minutes, re-parented to init; the agent killed them first.
    assert not set(stubs) & {p.pid for p in living_processes()}
    wait_for("the model loaded again", lambda: direct.is_model_ready(MODEL, version), timeout=120, procs=fleet.procs)
    wait_for("answers through the gateway again", lambda: _answers(fleet.gateway, world["key"]), timeout=30)


def test_a_native_front_that_never_listens_stops_its_gateway_with_a_failure(fleet: Fleet) -> None:
    """Not retried for ever behind a Python plane that looks healthy: the gateway exits 1, for
    its own supervisor to see."""
    with socket.socket() as taken:  # a listener without SO_REUSEPORT: gatewayd cannot bind beside it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = fleet.spawn("gateway-port-taken", [sys.executable, "manage.py", "run_gateway", "--native", "--bind", address])
        wait_for("the gateway to give up", lambda: proc.popen.poll() is not None, timeout=120)
    fleet.procs.remove(proc)
    assert proc.popen.returncode == 1, proc.tail()
    assert "gatewayd exited 5 times in a row before it was ready; giving up" in proc.tail(), proc.tail()
