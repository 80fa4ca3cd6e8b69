"""The floor under the gateway: direct Triton, a bare native pass-through (C++ gRPC
callback API, bench/native_floor/proxy.cc), the bare Python grpc.aio pass-through
(BRIEF.md's floor), the Python gateway alone and the appliance's gateway (the
native front with the Python gateway behind it) with every feature on, in one run,
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
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from gateway_overhead import cpu_seconds, pct, run  # noqa: E402
from gateway_scale import free_port, start_gateway  # noqa: E402

HERE = ROOT / "bench" / "native_floor"


def free_address() -> str:
    return f"127.0.0.1:{free_port()}"


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


def limited_key() -> dict[str, str]:
    """A key of tenant `bench-limited`, whose rate limit and daily quota are on (so high that
    they never refuse): every request also runs the quota script in Redis."""
    from lifecycle import Appliance

    app = Appliance()
    tenants = {t["slug"] for t in app.api("GET", "tenants/?limit=1000")["results"]}
    if "bench-limited" not in tenants:
        app.api("POST", "tenants/", {"slug": "bench-limited", "name": "bench-limited", "rate_limit_rps": 1_000_000,
                                     "rate_burst": 1_000_000, "daily_quota": 1_000_000_000})  # fmt: skip
        app.api("POST", "grants/", {"tenant": "bench-limited", "model": app.model})
    key = app.api("POST", "api-keys/", {"tenant": "bench-limited", "name": f"bench-{time.time():.0f}"})["key"]
    headers = {"authorization": f"Bearer {key}"}
    wait_ready(app.info["gateway"], headers, app.model)
    return headers


def wait_ready(address: str, headers: dict[str, str], model: str) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    for _ in range(100):
        try:
            if client.is_model_ready(model, headers=headers):
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"the gateway at {address} did not become ready")


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
    # The Python gateway alone, beside the `make run` gateway (native front + Python behind it).
    python_gateway, python_gateway_address = start_gateway(workers=1)
    key = {"authorization": f"Bearer {info['api_key']}"}
    paths = [
        ("direct Triton", triton, {}, None),
        ("native pass-through", native_address, {}, native.pid),
        ("Python pass-through", python_address, {}, python.pid),
        ("Python gateway, all", python_gateway_address, key, python_gateway.pid),
        ("native front, all", info["gateway"], key, info["gateway_pid"]),
        ("native front, + quota", info["gateway"], limited_key(), info["gateway_pid"]),
    ]
    rows = []
    try:
        for concurrency in args.concurrency:
            for label, address, headers, pid in paths:
                latencies, elapsed, used = asyncio.run(run(address, info["model"], version, headers, concurrency,
                                                           args.requests, lambda p=pid: (cpu_seconds(p),) if p else ()))  # fmt: skip
                cpu = used[0] / len(latencies) * 1e6 if pid else None
                rows.append((label, concurrency, pct(latencies, 50), pct(latencies, 99), len(latencies) / elapsed, cpu))
    finally:
        for proc in (native, python, python_gateway):
            proc.terminate()
            proc.wait(timeout=10)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; model {info['model']}:{version}; batch 1")
    print(f"{'path':<22} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'x direct':>8} {'proxy CPU µs/req':>17}")
    direct = {c: rps for label, c, _, _, rps, _ in rows if label == "direct Triton"}
    for label, concurrency, p50, p99, rps, cpu in rows:
        print(f"{label:<22} {concurrency:>4} {p50:>8.2f} {p99:>8.2f} {rps:>8.0f} {rps / direct[concurrency]:>8.2f} "
              f"{'-' if cpu is None else f'{cpu:.0f}':>17}")


if __name__ == "__main__":
    main()
