"""Direct Triton vs the gateway, same Triton, same model, same run.

Needs the appliance from `make run` (reads var/run/appliance.json). For each
concurrency it sends the same single-image digits requests with the stock
asyncio tritonclient, first straight to the node's Triton, then through the
gateway, and prints p50/p99 latency, requests/s and the gateway process's CPU
time per request (from /proc). Bounded: fixed request counts, loopback only.

    make bench        # or: .venv/bin/python bench/gateway_overhead.py --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as aioclient
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (state, ppid, …, utime, stime at 11, 12)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def own_cpu(pid: int) -> float:
    """utime + stime of one process (every thread, no children), in seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of the gateway, its threads and its live child processes (the native
    front, workers), in seconds."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = _stat(proc.name)
        except OSError:
            continue
        if int(proc.name) == pid or int(fields[1]) == pid:  # the process, or a child of it
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


async def run(address: str, model: str, version: str, headers: dict[str, str], concurrency: int, total: int,
              probe: Callable[[], tuple[float, ...]] = tuple, connections: bool = False,
              ) -> tuple[list[float], float, tuple[float, ...]]:  # fmt: skip
    """`concurrency` closed-loop clients send `total` requests after a warm-up of 50 each;
    returns the latencies, the elapsed seconds and how far the counters `probe` reads (CPU
    seconds, say) moved meanwhile -- the warm-up's requests counted in none of them. The
    clients share one connection (gRPC's subchannel pool) unless `connections`: one TCP
    connection each, as separate client processes would."""
    image = load_digits().data[:1].astype(np.float32)
    args = [("grpc.use_local_subchannel_pool", 1)] if connections else None
    clients = [aioclient.InferenceServerClient(address, channel_args=args) for _ in range(concurrency)]
    latencies: list[float] = []

    async def worker(client: aioclient.InferenceServerClient, count: int) -> None:
        tensor = aioclient.InferInput("IMAGE", [1, 64], "FP32")
        tensor.set_data_from_numpy(image)
        for _ in range(count):
            start = time.perf_counter()
            result = await client.infer(model, [tensor], model_version=version, headers=headers)
            latencies.append(time.perf_counter() - start)
            assert result.as_numpy("LABEL")[0][0] == 0

    await asyncio.gather(*(worker(c, 50) for c in clients))  # warm-up
    latencies.clear()
    before = probe()
    began = time.perf_counter()
    await asyncio.gather(*(worker(c, total // concurrency) for c in clients))
    elapsed = time.perf_counter() - began
    moved = tuple(b - a for a, b in zip(before, probe(), strict=True))
    for client in clients:
        await client.close()
    return latencies, elapsed, moved


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3200, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    info = json.loads((ROOT / "var" / "run" / "appliance.json").read_text())
    version = str(info["model_version"])
    gateway_headers = {"authorization": f"Bearer {info['api_key']}"}
    rows = []
    for concurrency in args.concurrency:
        for label, address, headers in (
            ("direct Triton", info["node_triton_grpc"], {}),
            ("via gateway", info["gateway"], gateway_headers),
        ):
            latencies, elapsed, (cpu,) = asyncio.run(run(address, info["model"], version, headers, concurrency, args.requests,
                                                         lambda: (cpu_seconds(info["gateway_pid"]),)))  # fmt: skip
            per_request = cpu / len(latencies) * 1e6 if label == "via gateway" else float("nan")
            rows.append((label, concurrency, pct(latencies, 50), pct(latencies, 99), len(latencies) / elapsed, per_request))
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} CPUs; model {info['model']}:{version}; batch 1")
    print(f"{'path':<14} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'gw CPU µs/req':>14}")
    for label, concurrency, p50, p99, rps, cpu in rows:
        cpu_text = "-" if cpu != cpu else f"{cpu:.0f}"
        print(f"{label:<14} {concurrency:>4} {p50:>8.2f} {p99:>8.2f} {rps:>8.0f} {cpu_text:>14}")


if __name__ == "__main__":
    main()
