"""The native front as a process: what it does when it cannot start."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from appliance.core.process import free_port

GATEWAYD = Path(__file__).resolve().parents[2] / "var" / "build" / "gatewayd"


def test_a_taken_port_makes_gatewayd_exit_at_once(tmp_path: Path) -> None:
    """Its supervisor (run_gateway) restarts a front that exits; one that hung instead would
    hold the restart for its readiness timeout."""
    assert GATEWAYD.exists(), "run `make native`"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(GATEWAYD), "--listen", f"127.0.0.1:{port}", "--full", f"127.0.0.1:{free_port()}",
             "--snapshot", str(tmp_path / "none.json"), "--redis", "127.0.0.1:6379/0"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    assert done.returncode == 1
    assert "cannot listen" in done.stderr
