"""Gateway throughput with 1 and 2 processes sharing the port, each process held to the
same CPU budget, against direct Triton in the same run.

On a small machine the load generator and Triton share the cores with the gateway, so
once the cores are full a second gateway process cannot add throughput whatever the
gateway does (two CPUs here: 1 and 2 uncapped Python workers both answer ~1,500 req/s).
What "throughput grows with gateway processes" asks is whether the gateway scales out:
whether a second process, given a CPU of its own, adds what the first one does, or
whether the two serialise on something shared (the port, Redis, a lock). So every
gateway process here gets the same budget, a cgroup CPU quota (cpu_budget.py) standing
in for "one core" of a bigger host whose other cores run the client and Triton: 0.25 CPU
per Python process and 0.15 per native instance by default, so that two budgets' worth
of traffic stays well inside what client and Triton can carry here. The run checks that
the budget, not the machine, held each row back ("budget used" near 100 %, direct
Triton well above the two-process rate) and prints a note for any row where it did not.

Rows, per concurrency (same Triton, model, request count):
- direct Triton: the ceiling of this client and Triton on this machine;
- Python gateway (`run_gateway`, every feature on) with `--workers 1` and `--workers 2`
  (processes sharing the port, SO_REUSEPORT), each process at its budget;
- the appliance's gateway as `make run` starts it (`run_gateway --native`: the native
  front and the Python gateway behind it): one instance at its budget; one instance at
  twice the budget (the front is one multi-threaded process: its threads are the
  "equivalent" of processes); two instances sharing the public port, each at its budget.

Needs the appliance from `make run` (reads var/run/appliance.json) and root for the
cgroups (`--cap 0`: no budgets, the uncapped comparison). The clients use one TCP
connection each, so that the kernel can spread them over the processes sharing the
port. Starts its own gateways on free loopback ports (same database, same Triton) and
stops them.

    .venv/bin/python bench/gateway_scale.py [--python-cap 0.25 --native-cap 0.15 --requests 4000 --concurrency 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from cpu_budget import CpuBudget  # noqa: E402
from gateway_overhead import cpu_seconds, own_cpu, pct, run  # noqa: E402

from appliance.core.process import free_port  # noqa: E402


def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (each SO_REUSEPORT process has its own; gRPC binds
    IPv4-mapped IPv6 sockets, so both tables count)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, _, hex_port = local.partition(":")
            count += state == "0A" and hex_port == f"{port:04X}" and host.endswith("0100007F")
    return count


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def start_gateway(workers: int, native: bool = False, address: str | None = None, sockets: int | None = None,
                  extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    """`run_gateway` on `address` (a free loopback port by default); returns once `sockets`
    listeners (default: `workers`, or 1 for the native front) are on the port and it serves."""
    address = address or f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "manage.py", "run_gateway", "--bind", address, "--workers", str(workers), *extra]
    if native:
        argv.append("--native")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    want = sockets or (1 if native else workers)
    client = grpcclient.InferenceServerClient(address)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"run_gateway {' '.join(argv[3:])} exited with {proc.returncode}")
        try:
            if listeners(int(address.rsplit(":", 1)[1])) >= want and client.is_server_ready():
                return proc, address
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"gateway with {workers} workers did not start")


def wait_model(address: str, headers: dict[str, str], model: str) -> None:
    client = grpcclient.InferenceServerClient(address)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready(model, headers=headers):
                return
        except Exception:  # noqa: BLE001 - snapshot not loaded yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"{model} is not ready at {address}")


@dataclass
class Target:
    label: str
    processes: int  # gateway processes serving requests (0: direct Triton)
    budget_cpus: float  # CPUs its answering processes may use together (0: no budget)
    address: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    budgets: list[CpuBudget] = field(default_factory=list)
    hot: list[int] = field(default_factory=list)  # the processes answering this load, each at its budget
    metrics: list[int] = field(default_factory=list)  # the native fronts' Prometheus ports

    def probe(self) -> tuple[float, float, float, float]:
        """CPU seconds of the whole gateway (every process of it) and of its answering
        processes; requests the native fronts answered themselves and handed behind them."""
        whole = sum(cpu_seconds(p.pid) for p in self.procs)
        return whole, sum(own_cpu(pid) for pid in self.hot), *self.handled()

    def handled(self) -> tuple[float, float]:
        """(answered by the native fronts themselves, handed to the Python gateway behind)."""
        native = handed = 0.0
        for port in self.metrics:
            for line in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode().splitlines():
                if line.startswith('gateway_requests_total{plane="native"'):
                    native += float(line.rsplit(" ", 1)[1])
                elif line.startswith("gateway_native_handoffs_total"):
                    handed += float(line.rsplit(" ", 1)[1])
        return native, handed

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait(timeout=30)
        for budget in self.budgets:
            budget.close()


def launch(kind: str, cap: float, period_us: int) -> list[Target]:
    """The gateways to measure; each started uncapped (start-up is not measured), then put in
    its budget: one per Python worker process; for a native instance one for its front and
    one (never more than `cap`) for the Python gateway behind it, which answers no request
    of this load (the "native" column shows it) but must refresh the front's snapshot."""
    budget = (lambda name, cpus: CpuBudget(name, cpus, period_us)) if cap else None
    targets: list[Target] = []
    if kind == "python":
        for workers in (1, 2):
            proc, address = start_gateway(workers)
            target = Target(f"Python gateway, {workers} proc", workers, cap * workers, address, [proc])
            target.hot = [proc.pid, *children(proc.pid)]
            if budget:
                for index, pid in enumerate(target.hot):
                    target.budgets.append(budget(f"py{workers}-{index}", cap))
                    target.budgets[-1].add(pid)
            targets.append(target)
    else:
        for label, instances, share in (("native front, 1 inst", 1, 1), ("native front, 1 inst, 2x cap", 1, 2),
                                        ("native front, 2 inst", 2, 1)):  # fmt: skip
            address = f"127.0.0.1:{free_port()}"
            target = Target(label, instances, cap * share * instances, address)
            for index in range(instances):
                target.metrics.append(free_port())
                proc, _ = start_gateway(1, native=True, address=address, sockets=index + 1,
                                        extra=("--native-metrics-bind", f"127.0.0.1:{target.metrics[-1]}"))  # fmt: skip
                target.procs.append(proc)
                (front,) = children(proc.pid)
                target.hot.append(front)
                if budget:
                    target.budgets += [budget(f"front{instances}-{share}-{index}", cap * share),
                                       budget(f"behind{instances}-{share}-{index}", cap)]  # fmt: skip
                    target.budgets[-2].add(front)
                    target.budgets[-1].add(proc.pid)
            targets.append(target)
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, help="CPUs per gateway process, both kinds (0: no budget)")
    parser.add_argument("--python-cap", type=float, default=0.25, help="CPUs per Python gateway process")
    parser.add_argument("--native-cap", type=float, default=0.15, help="CPUs per native front instance")
    parser.add_argument("--period-ms", type=float, default=100, help="the budget's accounting period")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--only", choices=["python", "native"], help="one kind of gateway only")
    args = parser.parse_args()
    caps = {"python": args.python_cap, "native": args.native_cap} if args.cap is None else dict.fromkeys(("python", "native"), args.cap)
    if any(caps.values()) and CpuBudget.available():
        raise SystemExit(f"{CpuBudget.available()}; run as root, or with --cap 0 for the uncapped comparison")
    info = json.loads((ROOT / "var" / "run" / "appliance.json").read_text())
    model, version = info["model"], str(info["model_version"])
    headers = {"authorization": f"Bearer {info['api_key']}"}
    rows: list[tuple[str, int, float, int, float, float, float, float | None, float | None, float | None]] = []

    def measure(target: Target, hdrs: dict[str, str]) -> None:
        for concurrency in args.concurrency:
            latencies, elapsed, (whole, hot, native, handed) = asyncio.run(
                run(target.address, model, version, hdrs, concurrency, args.requests, target.probe, connections=True))
            per_request = whole / len(latencies) * 1e6 if target.procs else None
            used = hot / (elapsed * target.budget_cpus) * 100 if target.budget_cpus else None
            share = native / (native + handed) * 100 if target.metrics and native + handed else None
            rows.append((target.label, target.processes, target.budget_cpus, concurrency, len(latencies) / elapsed,
                         pct(latencies, 50), pct(latencies, 99), per_request, used, share))  # fmt: skip

    measure(Target("direct Triton", 0, 0, info["node_triton_grpc"]), {})  # fmt: skip
    for kind in ("python", "native"):
        if args.only and kind != args.only:
            continue
        for target in launch(kind, caps[kind], round(args.period_ms * 1000)):
            try:
                wait_model(target.address, headers, model)
                measure(target, headers)
            finally:
                target.stop()

    budgets = ", ".join(f"{kind} {cap or 'none'}" for kind, cap in caps.items() if not args.only or kind == args.only)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; model {model}:{version}; "
          f"CPU budget per gateway process: {budgets}; {args.requests} requests per row")  # fmt: skip
    print(f"{'path':<30} {'conc':>4} {'budget':>6} {'req/s':>7} {'x 1 proc':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU µs/req':>10} {'budget used':>11} {'native':>7}")  # fmt: skip
    single = {(label.split(",")[0], c): rps for label, n, _, c, rps, *_ in rows if n == 1 and "2x" not in label}
    for label, _, budget_cpus, concurrency, rps, p50, p99, per_request, used, share in rows:
        base = single.get((label.split(",")[0], concurrency))
        print(f"{label:<30} {concurrency:>4} {budget_cpus or '-':>6} {rps:>7.0f} "
              f"{f'{rps / base:.2f}' if base and label != 'direct Triton' else '-':>8} {p50:>7.2f} {p99:>7.2f} "
              f"{'-' if per_request is None else f'{per_request:.0f}':>10} {'-' if used is None else f'{used:.0f} %':>11} "
              f"{'-' if share is None else f'{share:.0f} %':>7}")  # fmt: skip
    print("budget: CPUs of the answering processes together; budget used: their CPU time over it; CPU µs/req: every "
          "process of the gateway; native: share of requests the native fronts answered themselves")  # fmt: skip
    # A row is budget-bound only if the machine had room left: the client and Triton must be
    # able to carry far more than the gateway did (direct Triton in the same run says how much).
    direct = {c: rps for label, _, _, c, rps, *_ in rows if label == "direct Triton"}
    for label, _, budget_cpus, concurrency, rps, *_, used, _ in rows:
        if budget_cpus and (rps > 0.6 * direct[concurrency] or (used or 0) < 85):
            print(f"note: {label} at {concurrency}: {rps:.0f} req/s against {direct[concurrency]:.0f} direct, budget "
                  f"{used:.0f} % used -- held back by more than its budget (the machine, or uneven connections)")  # fmt: skip

if __name__ == "__main__":
    main()
