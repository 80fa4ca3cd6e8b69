"""Overload at 3× the sustainable rate: goodput, shedding, and what a critical tenant sees.

Needs the appliance from `make run` (reads var/run/appliance.json). Registers (once)
a model `slowbatch` (or `slowprio`, `--model`) — the demo classifier plus 20 ms per batch, max batch 8, so
one replica sustains a known few hundred requests a second — two tenants,
`bench-critical` (priority class critical) and `bench-batch` (batch), and their
keys; deploys the model on the demo node. Then, through the gateway:

1. peak: closed-loop batch-class load (64 clients), once to let the replica's adaptive
   limit settle, then measured → sustainable goodput;
2. unloaded: the critical tenant alone at 20 requests/s → its p50/p99;
3. overload: open-loop batch-class arrivals at 3× peak, with the critical tenant
   at 20 requests/s beside it → batch goodput (answered/s), shed (RESOURCE_EXHAUSTED),
   and the critical tenant's p50/p99.

The baseline in the same run: in phases 2 and 3 a second critical stream (20/s, half
a period apart) goes straight to the shared replica's Triton at Triton's top
priority, so the gateway's critical tail is read against what Triton itself gives a
critical request there at that moment.

`--reserve`: capacity reserved for the critical tenant, as the product offers it — a
MIG slice of the node dedicated to the tenant (made if none is free) with a replica
of the model on it; the gateway sends that tenant only there, everyone else to the
shared replica. Needs a node with GPUs, e.g. the demo appliance started with
`APPLIANCE_NODE_INVENTORY=simulated APPLIANCE_SIMULATE_GPUS=H100-80GB make run`
(simulated slices run their own Triton on the same CPUs).

    .venv/bin/python bench/overload.py [--seconds 10] [--model slowbatch|slowprio|slowprio2] [--native-load] [--reserve]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as aioclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from lifecycle import IMAGES, Appliance  # noqa: E402

from appliance.core.launcher import _multipart  # noqa: E402

SLOW_SUFFIX = '''

import time as _time

_Good = TritonPythonModel


class TritonPythonModel(_Good):
    def execute(self, requests):
        _time.sleep(0.02)
        return _Good.execute(self, requests)
'''
# `slowbatch`: the gateway's classes only. `slowprio`: also Triton's own priority queue
# (three levels; the gateway sends the tenant's class as the request priority, critical 1 …
# batch 3), so a critical request overtakes batch requests already waiting inside Triton.
# `slowprio2`: the same with two model instances, so a critical request waits for the
# first of two batches in execution to end rather than for the only one.
_PRIORITIES = {"priority_levels": 3, "default_priority_level": 2}
PROFILES = {
    "slowbatch": {"max_batch_size": 8},
    "slowprio": {"max_batch_size": 8, "dynamic_batching": _PRIORITIES},
    "slowprio2": {"max_batch_size": 8, "dynamic_batching": _PRIORITIES, "instance_group": {"count": 2}},
}
MODEL = "slowbatch"


def setup(app: Appliance) -> dict[str, str]:
    """Model, tenants, grants and keys (idempotent); returns {class: key}."""
    models = {m["name"] for m in app.api("GET", "models/?limit=1000")["results"]}
    if MODEL not in models:
        app.api("POST", "models/", {"name": MODEL, "serving_profile": PROFILES[MODEL]})
    if not [d for d in app.api("GET", f"deployments/?model={MODEL}")["results"] if d["state"] == "live"]:
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(app.artifact), mode="r:gz") as archive:
            files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]
        from triton_models.packaging import pack_files

        files["model.py"] = files["model.py"] + SLOW_SUFFIX.encode()
        body, ctype = _multipart(
            {"model": MODEL, "format": "python", "signature": json.dumps(app.manifest["signature"]),
             "max_batch_size": "64", "decoupled": "false"},
            {"artifact": ("slowbatch.tar.gz", pack_files(files))},
        )  # fmt: skip
        version = app.api("POST", "versions/", raw=body, ctype=ctype)
        node = app.serving()["replicas"][0]["node"]
        deployment = app.api("POST", "deployments/", {"version": version["id"], "nodes": [node]})
        app.wait_ended(deployment["id"])
    tenants = {t["slug"] for t in app.api("GET", "tenants/?limit=1000")["results"]}
    grants = {(g["tenant"], g["model"]) for g in app.api("GET", "grants/?limit=1000")["results"]}
    keys = {}
    for cls in ("critical", "batch"):
        slug = f"bench-{cls}"
        if slug not in tenants:
            app.api("POST", "tenants/", {"slug": slug, "name": slug, "priority_class": cls})
        if (slug, MODEL) not in grants:
            app.api("POST", "grants/", {"tenant": slug, "model": MODEL})
        keys[cls] = app.api("POST", "api-keys/", {"tenant": slug, "name": f"bench-{time.time():.0f}"})["key"]
    time.sleep(2.5)  # two gateway snapshot periods: the new keys are known everywhere
    return keys


def reserve_slice(app: Appliance, tenant: str = "bench-critical") -> str:
    """A MIG slice of the model's node dedicated to `tenant`, serving the model's live
    version; returns the slice's uuid."""
    live = next(d for d in app.api("GET", f"deployments/?model={MODEL}")["results"] if d["state"] == "live")
    node = live["replicas"][0]["node"]

    def slices() -> list[dict[str, object]]:
        gpus = app.api("GET", f"nodes/{node}/")["gpus"]
        if not gpus:
            raise SystemExit(f"--reserve needs a node with GPUs; {node} has none (see the docstring)")
        return [d for g in gpus for d in g["mig_devices"]]

    found = slices()
    device = next((d for d in found if d["tenant"] == tenant), None) or next((d for d in found if not d["tenant"]), None)
    if device is None:
        run = app.api("POST", f"nodes/{node}/reconfigure/", {"gpu": 0, "layout": ["3g.40gb", "3g.40gb"]})
        while (run := app.api("GET", f"reconfigurations/{run['id']}/"))["state"] not in ("succeeded", "failed"):
            time.sleep(0.2)
        if run["state"] != "succeeded":
            raise SystemExit(f"could not partition the GPU: {run['error']}")
        device = next(d for d in slices() if not d["tenant"])
    uuid = str(device["uuid"])
    app.api("PATCH", f"mig-devices/{uuid}/", {"tenant": tenant})
    on_slice = [d for d in app.api("GET", f"deployments/?model={MODEL}")["results"]
                if d["state"] == "live" and any(r.get("mig_uuid") == uuid for r in d["replicas"])]  # fmt: skip
    if not on_slice:
        deployment = app.api("POST", "deployments/", {"version": live["version"], "mig_devices": [uuid]})
        if app.wait_ended(deployment["id"])["state"] != "live":
            raise SystemExit("the replica on the reserved slice did not go live")
    time.sleep(2.5)  # two gateway snapshot periods
    return uuid


def _input(i: int) -> aioclient.InferInput:
    tensor = aioclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGES[i % len(IMAGES)].reshape(1, 64).astype(np.float32))
    return tensor


async def _one(client: aioclient.InferenceServerClient, key: str, i: int, out: list[tuple[str, float]]) -> None:
    """One request: through the gateway with an API key, or (key "") straight to Triton at
    its top priority."""
    started = time.perf_counter()
    try:
        if key:
            await client.infer(MODEL, [_input(i)], headers={"authorization": f"Bearer {key}"}, client_timeout=10)
        else:
            levels = PROFILES[MODEL].get("dynamic_batching", {}).get("priority_levels", 0)
            await client.infer(MODEL, [_input(i)], priority=1 if levels else 0, client_timeout=10)
        out.append(("ok", time.perf_counter() - started))
    except Exception as exc:
        status = str(getattr(exc, "status", lambda: "error")()).replace("StatusCode.", "")
        out.append((status, time.perf_counter() - started))
        if status == "RESOURCE_EXHAUSTED":
            _refused(str(getattr(exc, "message", lambda: "")()), out[-1][1])


# How the gateway says "no" (admission.py's messages), and each refusal of this run by kind.
REFUSAL_KINDS = {"at arrival (queue full)": "queue is full", "evicted for a higher class": "higher-priority",
                 "after waiting out the queue": "no replica slot within"}  # fmt: skip
REFUSALS: list[tuple[str, float]] = []


def _refused(message: str, seconds: float) -> None:
    REFUSALS.append((next((k for k, words in REFUSAL_KINDS.items() if words in message), "other"), seconds))


async def closed_loop(address: str, key: str, clients: int, seconds: float) -> float:
    out: list[tuple[str, float]] = []
    stop = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        async with aioclient.InferenceServerClient(address) as client:
            i = index
            while time.perf_counter() < stop:
                await _one(client, key, i, out)
                i += clients

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return sum(1 for s, _ in out if s == "ok") / (time.perf_counter() - began)


async def open_loop(address: str, key: str, rate: float, seconds: float, out: list[tuple[str, float]],
                    offset: float = 0.0) -> None:  # fmt: skip
    """Arrivals at a fixed rate whatever the answers do (a real overload), from `offset` s on."""
    await asyncio.sleep(offset)
    async with aioclient.InferenceServerClient(address) as client:
        tasks = []
        began = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - began < seconds:
            due = began + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(_one(client, key, n, out)))
            n += 1
        await asyncio.gather(*tasks)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


def _loadgen() -> Path:
    """bench/native_floor/loadgen.cc, built like the native front (Debian's libgrpc++)."""
    import subprocess

    binary = ROOT / "var" / "build" / "loadgen"
    source = ROOT / "bench" / "native_floor" / "loadgen.cc"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], check=True, capture_output=True, text=True).stdout.split()
        subprocess.run(["g++", "-O2", "-std=c++17", str(source), *flags, "-o", str(binary)], check=True)
    return binary


async def native_open_loop(address: str, key: str, rate: float, seconds: float, out: list[tuple[str, float]]) -> None:
    """The same arrivals from the C++ generator (one image, the batch tenant's key)."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="IMAGE", datatype="FP32")
    tensor.shape.extend([1, 64])
    request.raw_input_contents.append(IMAGES[0].reshape(1, 64).astype(np.float32).tobytes())
    body = ROOT / "var" / "build" / "loadgen-request.bin"
    body.write_bytes(request.SerializeToString())
    proc = await asyncio.create_subprocess_exec(
        str(_loadgen()), address, "/inference.GRPCInferenceService/ModelInfer", str(body), "authorization",
        f"Bearer {key}", f"{rate}", f"{seconds}", "10", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await proc.communicate()
    summary = json.loads(stdout)
    names = {"0": "ok"}
    for code, count in summary["codes"].items():
        if code != "8":
            out.extend([(names.get(code, f"code {code}"), 0.0)] * count)
    for message, ms in summary["refused"]:
        out.append(("RESOURCE_EXHAUSTED", ms / 1000))
        _refused(message, ms / 1000)


def _critical_rows(name: str, alone: list[tuple[str, float]], loaded: list[tuple[str, float]]) -> list[tuple[str, str]]:
    alone_ok = [lat for s, lat in alone if s == "ok"]
    loaded_ok = [lat for s, lat in loaded if s == "ok"]
    return [
        (f"{name} alone p50 / p99", f"{pct(alone_ok, 50):.1f} / {pct(alone_ok, 99):.1f} ms ({len(alone_ok)} ok of {len(alone)})"),
        (f"{name} under overload p50 / p90 / p99",
         f"{pct(loaded_ok, 50):.1f} / {pct(loaded_ok, 90):.1f} / {pct(loaded_ok, 99):.1f} ms ({len(loaded_ok)} ok of {len(loaded)})"),
        (f"{name} p99 ratio", f"{pct(loaded_ok, 99) / pct(alone_ok, 99):.2f}×"),
    ]  # fmt: skip


async def scenario(address: str, keys: dict[str, str], seconds: float, native_load: bool = False,
                   triton: str = "", reserved: bool = False) -> list[tuple[str, ...]]:  # fmt: skip
    await closed_loop(address, keys["batch"], 64, seconds)  # the replica's limit settles
    peak = await closed_loop(address, keys["batch"], 64, seconds)
    # The critical tenant through the gateway, and (baseline) straight to Triton half a period later.
    alone: list[tuple[str, float]] = []
    alone_direct: list[tuple[str, float]] = []
    await asyncio.gather(open_loop(address, keys["critical"], 20, seconds / 2, alone),
                         *([open_loop(triton, "", 20, seconds / 2, alone_direct, offset=0.025)] if triton else []))  # fmt: skip
    batch: list[tuple[str, float]] = []
    critical: list[tuple[str, float]] = []
    direct: list[tuple[str, float]] = []
    REFUSALS.clear()
    began = time.perf_counter()
    batch_load = native_open_loop if native_load else open_loop
    await asyncio.gather(batch_load(address, keys["batch"], 3 * peak, seconds, batch),
                         open_loop(address, keys["critical"], 20, seconds, critical),
                         *([open_loop(triton, "", 20, seconds, direct, offset=0.025)] if triton else []))  # fmt: skip
    elapsed = time.perf_counter() - began
    ok_batch = [lat for s, lat in batch if s == "ok"]
    shed = sum(1 for s, _ in batch if s == "RESOURCE_EXHAUSTED")
    other = sum(1 for s, _ in batch if s not in ("ok", "RESOURCE_EXHAUSTED"))
    # What the shared replica answered (the critical tenant's requests are elsewhere when it has its slice).
    answered = sum(1 for s, _ in [*batch, *direct, *([] if reserved else critical)] if s == "ok")
    return [
        ("sustainable goodput (closed loop, 64 clients)", f"{peak:.0f} req/s"),
        ("offered batch load", f"{3 * peak:.0f} req/s ({len(batch)} requests)"),
        ("batch goodput under overload", f"{len(ok_batch) / elapsed:.0f} req/s ({len(ok_batch) / elapsed / peak:.2f}× peak)"),
        # The critical streams take places in the shared replica's batches too.
        ("all answered by the shared replica", f"{answered / elapsed:.0f} req/s ({answered / elapsed / peak:.2f}× peak)"),
        ("batch shed (RESOURCE_EXHAUSTED) / other errors", f"{shed} / {other}"),
        # How long a client waits to hear "no", by how it was said. Client-side: includes the
        # load generator's own delays (far fewer with --native-load).
        *[(f"time to a refusal, {kind}: n, p50 / p99 / max",
           f"{len(times)}, {pct(times, 50):.1f} / {pct(times, 99):.1f} / {max(times, default=0) * 1000:.1f} ms")
          for kind in [*REFUSAL_KINDS, "other"] if (times := [t for k, t in REFUSALS if k == kind])],
        *_critical_rows("critical via gateway", alone, critical),
        *(_critical_rows("critical straight to Triton (baseline)", alone_direct, direct) if triton else []),
    ]


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", choices=sorted(PROFILES), default=MODEL)
    parser.add_argument("--native-load", action="store_true",
                        help="the overload's batch arrivals from bench/native_floor/loadgen.cc instead of Python")  # fmt: skip
    parser.add_argument("--reserve", action="store_true",
                        help="a MIG slice dedicated to the critical tenant, with its own replica (needs GPUs, simulated or not)")  # fmt: skip
    args = parser.parse_args()
    MODEL = args.model
    app = Appliance()
    keys = setup(app)
    reserved = reserve_slice(app) if args.reserve else ""
    if args.native_load:
        _loadgen()  # built before anything is timed
    rows = asyncio.run(scenario(app.info["gateway"], keys, args.seconds, args.native_load, app.info["node_triton_grpc"],
                                bool(reserved)))  # fmt: skip
    instances = PROFILES[MODEL].get("instance_group", {}).get("count", 1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; model {MODEL} (20 ms per batch of ≤ 8, "
          f"{instances} instance{'s' if instances > 1 else ''}{'; the critical tenant on its own slice ' + reserved if reserved else ''}); "
          f"batch arrivals from {'the C++ generator' if args.native_load else 'Python'}")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

