"""The floor under the gateway: direct Triton, a bare native pass-through (C++ gRPC
callback API, bench/native_floor/proxy.cc), the bare Python grpc.aio pass-through
(BRIEF.md's floor) and the appliance's gateway with every feature on, in one run,
same Triton, same model, same load; CPU per request of each proxy process.

Needs the appliance from `make run`, a C++ compiler and Debian's libgrpc++-dev
(`apt-get install libgrpc++-dev pkg-config`); not part of `make test`.

    .venv/bin/python bench/native_floor.py [--requests 3000 --concurrency 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from gateway_overhead import cpu_seconds, pct, run  # noqa: E402

HERE = ROOT / "bench" / "native_floor"


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def build() -> Path:
    binary = ROOT / "var" / "build" / "native-proxy"
    binary.parent.mkdir(parents=True, exist_ok=True)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], check=True, capture_output=True, text=True).stdout.split()
    subprocess.run(["g++", "-O2", "-std=c++17", str(HERE / "proxy.cc"), *flags, "-o", str(binary)], check=True)
    return binary


def start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening"):
        raise SystemExit(f"{argv[0]} did not start: {line}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    info = json.loads((ROOT / "var" / "run" / "appliance.json").read_text())
    triton, version = info["node_triton_grpc"], str(info["model_version"])
    native_address, python_address = free_address(), free_address()
    native = start([str(build()), native_address, triton])
    python = start([sys.executable, str(HERE / "py_passthrough.py"), python_address, triton])
    paths = [
        ("direct Triton", triton, {}, None),
        ("native pass-through", native_address, {}, native.pid),
        ("Python pass-through", python_address, {}, python.pid),
        ("gateway, all features", info["gateway"], {"authorization": f"Bearer {info['api_key']}"}, info["gateway_pid"]),
    ]
    rows = []
    try:
        for concurrency in args.concurrency:
            for label, address, headers, pid in paths:
                before = cpu_seconds(pid) if pid else 0.0
                latencies, elapsed = asyncio.run(run(address, info["model"], version, headers, concurrency, args.requests))
                cpu = (cpu_seconds(pid) - before) / len(latencies) * 1e6 if pid else None
                rows.append((label, concurrency, pct(latencies, 50), pct(latencies, 99), len(latencies) / elapsed, cpu))
    finally:
        for proc in (native, python):
            proc.terminate()
            proc.wait(timeout=10)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; model {info['model']}:{version}; batch 1")
    print(f"{'path':<22} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'proxy CPU µs/req':>17}")
    for label, concurrency, p50, p99, rps, cpu in rows:
        print(f"{label:<22} {concurrency:>4} {p50:>8.2f} {p99:>8.2f} {rps:>8.0f} {'-' if cpu is None else f'{cpu:.0f}':>17}")


if __name__ == "__main__":
    main()
