"""Gateway throughput with 1 and 2 worker processes sharing the port (SO_REUSEPORT),
against direct Triton, same run.

Needs the appliance from `make run` (reads var/run/appliance.json); starts its own
gateways on free loopback ports with `run_gateway --workers N` (same database,
same Triton) and stops them. One load-generating process (the stock asyncio
client), so on a small machine the client's own CPU is part of the ceiling.

    .venv/bin/python bench/gateway_scale.py [--requests 6400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from gateway_overhead import pct, run  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(workers: int) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "manage.py", "run_gateway", "--bind", address, "--workers", str(workers)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    client = grpcclient.InferenceServerClient(address)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return proc, address
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"gateway with {workers} workers did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    info = json.loads((ROOT / "var" / "run" / "appliance.json").read_text())
    version = str(info["model_version"])
    headers = {"authorization": f"Bearer {info['api_key']}"}
    rows = []
    targets: list[tuple[str, str, dict[str, str], subprocess.Popen[bytes] | None]] = [
        ("direct Triton", info["node_triton_grpc"], {}, None)
    ]
    for workers in (1, 2):
        proc, address = start_gateway(workers)
        targets.append((f"gateway, {workers} process{'es' if workers > 1 else ''}", address, headers, proc))
    try:
        for concurrency in args.concurrency:
            for label, address, hdrs, _ in targets:
                latencies, elapsed = asyncio.run(run(address, info["model"], version, hdrs, concurrency, args.requests))
                rows.append((label, concurrency, len(latencies) / elapsed, pct(latencies, 50), pct(latencies, 99)))
    finally:
        for *_, proc in targets:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; model {info['model']}:{version}")
    print(f"{'path':<22} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, concurrency, rps, p50, p99 in rows:
        print(f"{label:<22} {concurrency:>4} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f}")


if __name__ == "__main__":
    main()
