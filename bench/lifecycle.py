"""Model lifecycle numbers, each against its own baseline in the same run.

Needs the appliance from `make run` (reads var/run/appliance.json); rolls new
versions of the demo model out on it, so run it on a demo appliance only.

1. Latency during each rollout strategy vs steady state: a closed-loop load of
   CONCURRENCY stock asyncio clients through the gateway, steady for a few
   seconds, then while a rollout runs from request to the old version unloaded.
2. Cold start: the first request to a version right after its rollout, with the
   serving profile's warm-up off and on, against the warm p50 of that version.
3. Scale from zero: time from a request to an unloaded (idle) model to its answer.
4. Dynamic batching: throughput and p95 at concurrency 32 straight to Triton,
   for generated configs with dynamic batching off and at several queue delays.

    .venv/bin/python bench/lifecycle.py [--only rollouts cold zero batching]
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
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from appliance.core.launcher import _multipart, api_call  # noqa: E402

IMAGES = load_digits().data.astype(np.float32)
CONCURRENCY = 4


class Appliance:
    def __init__(self) -> None:
        self.info = json.loads((ROOT / "var" / "run" / "appliance.json").read_text())
        self.model = self.info["model"]
        self.headers = {"authorization": f"Bearer {self.info['api_key']}"}
        self.artifact = (ROOT / "var" / "build" / f"{self.model}.tar.gz").read_bytes()
        self.manifest = json.loads((ROOT / "triton_models" / self.model / "manifest.json").read_text())

    def api(self, method: str, path: str, body: Any = None, raw: bytes | None = None, ctype: str = "") -> Any:
        return api_call(self.info["api_url"], self.info["operator_token"], method, path, body, raw=raw, ctype=ctype)

    def serving(self) -> dict[str, Any]:
        return next(d for d in self.api("GET", f"deployments/?model={self.model}")["results"] if d["state"] == "live")

    def upload(self, note: str) -> dict[str, Any]:
        parent = self.serving()["version"]
        body, ctype = _multipart(
            {"model": self.model, "format": self.manifest["format"], "signature": json.dumps(self.manifest["signature"]),
             "max_batch_size": str(self.manifest["max_batch_size"]), "decoupled": "false", "parent": parent,
             "change_kind": "config", "change_note": note},
            {"artifact": (f"{self.model}.tar.gz", self.artifact)},
        )  # fmt: skip
        return dict(self.api("POST", "versions/", raw=body, ctype=ctype))

    def rollout(self, note: str, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        version = self.upload(note)
        deployment = self.api("POST", "deployments/", {"version": version["id"], **options})
        return version, deployment

    def wait_ended(self, deployment_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.api("GET", f"deployments/{deployment_id}/")
            if current["state"] in ("live", "failed", "rolled_back"):
                return dict(current)
            time.sleep(0.1)
        raise SystemExit(f"deployment {deployment_id} did not end")

    def triton(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.info["node_triton_grpc"])

    def ready_versions(self) -> set[str]:
        index = self.triton().get_model_repository_index().models
        return {m.version for m in index if m.name == self.model and m.state == "READY"}

    def parked(self) -> bool:
        """The serving deployment's replicas are all unloaded for idleness, and Triton agrees."""
        replicas = self.serving()["replicas"]
        return all(r["state"] == "parked" for r in replicas) and not self.ready_versions()

    def set_model(self, **fields: Any) -> None:
        self.api("PATCH", f"models/{self.model}/", fields)


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else float("nan")
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def _input(i: int) -> aioclient.InferInput:
    tensor = aioclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGES[i % len(IMAGES)].reshape(1, 64))
    return tensor


async def _load(address: str, model: str, headers: dict[str, str], stop: asyncio.Event,
                out: list[tuple[float, float, bool]], concurrency: int) -> None:  # fmt: skip
    """Closed loop: (finish time, latency, ok) per request until stop is set."""

    async def worker(index: int) -> None:
        async with aioclient.InferenceServerClient(address) as client:
            n = index
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await client.infer(model, [_input(n)], headers=headers, client_timeout=30)
                    ok = True
                except Exception:
                    ok = False
                out.append((time.perf_counter(), time.perf_counter() - started, ok))
                n += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def _rollout_under_load(app: Appliance, steady_s: float, label: str, options: dict[str, Any],
                              out: list[tuple[float, float, bool]]) -> tuple[float, float, dict[str, Any], dict[str, Any]]:  # fmt: skip
    stop = asyncio.Event()
    load = asyncio.create_task(_load(app.info["gateway"], app.model, app.headers, stop, out, CONCURRENCY))
    await asyncio.sleep(steady_s)
    began = time.perf_counter()
    version, deployment = await asyncio.to_thread(app.rollout, f"bench {label}", **options)
    done = await asyncio.to_thread(app.wait_ended, deployment["id"])
    while await asyncio.to_thread(app.ready_versions) != {str(version["number"])}:
        await asyncio.sleep(0.1)
    ended = time.perf_counter()
    stop.set()
    await load
    return began, ended, version, done


def bench_rollouts(app: Appliance, steady_s: float) -> list[tuple[str, ...]]:
    strategies = [
        ("all_at_once", {"strategy": "all_at_once"}),
        ("blue_green", {"strategy": "blue_green", "step_seconds": 5}),
        ("canary 25/50/100", {"strategy": "canary", "steps": [25, 50, 100], "step_seconds": 3}),
    ]
    rows = []
    for label, options in strategies:
        out: list[tuple[float, float, bool]] = []
        began, ended, version, done = asyncio.run(_rollout_under_load(app, steady_s, label, options, out))
        steady = [lat for t, lat, ok in out if t < began]
        during = [lat for t, lat, ok in out if began <= t <= ended]
        failed = sum(1 for t, _, ok in out if began <= t <= ended and not ok)
        rows.append((label, f"{ended - began:.1f}", f"{pct(steady, 50):.2f}", f"{pct(steady, 99):.2f}",
                     f"{pct(during, 50):.2f}", f"{pct(during, 99):.2f}", f"{pct(during, 99) / pct(steady, 99):.2f}",
                     str(len(during)), str(failed), done["state"]))  # fmt: skip
    return rows


def _first_request_ms(app: Appliance, version: str, previous: str) -> float:
    """The new version's first request, on a client whose connection and call path are
    already warm (one request to the previous version, still loaded during the grace
    period), so that what is timed is the model's own first request."""
    client = app.triton()
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGES[7].reshape(1, 64))
    for _ in range(20):
        client.infer(app.model, [tensor], model_version=previous)
    started = time.perf_counter()
    client.infer(app.model, [tensor], model_version=version)
    return (time.perf_counter() - started) * 1000


def _warm_p50_ms(app: Appliance, version: str, n: int = 300) -> float:
    client = app.triton()
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGES[7].reshape(1, 64))
    times = []
    for _ in range(n):
        started = time.perf_counter()
        client.infer(app.model, [tensor], model_version=version)
        times.append(time.perf_counter() - started)
    return pct(times, 50)


def bench_cold_start(app: Appliance, runs: int) -> list[tuple[str, ...]]:
    """Per rollout: the new version's first request; its warm p50 (a hot loop); and a
    control with the same request pattern on the now-warm version (20 requests to the
    previous version, then one to the new), which separates the model's cold start
    from what a single request after a switch costs anyway."""
    rows = []
    for source in ("none", "zero"):
        app.set_model(serving_profile={"warmup": {"source": source, "count": 3}})
        firsts, warms, controls = [], [], []
        for _ in range(runs):
            previous = str(app.serving()["version_number"])
            version, deployment = app.rollout(f"bench cold start, warm-up {source}")
            app.wait_ended(deployment["id"])
            firsts.append(_first_request_ms(app, str(version["number"]), previous))
            warms.append(_warm_p50_ms(app, str(version["number"])))
            controls.append(_first_request_ms(app, str(version["number"]), previous))
        first, warm, control = statistics.median(firsts), statistics.median(warms), statistics.median(controls)
        rows.append((f"warm-up {source}", f"{first:.2f}", f"{max(firsts):.2f}", f"{control:.2f}", f"{warm:.2f}",
                     f"{first / warm:.2f}", f"{first / control:.2f}"))  # fmt: skip
    app.set_model(serving_profile={})
    return rows


def bench_scale_from_zero(app: Appliance, runs: int) -> list[tuple[str, ...]]:
    times = []
    client = grpcclient.InferenceServerClient(app.info["gateway"])
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGES[3].reshape(1, 64))
    app.set_model(idle_unload_s=2)
    try:
        for _ in range(runs):
            deadline = time.monotonic() + 60
            while not app.parked() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not app.parked():
                raise SystemExit("the idle model was not unloaded within 60 s")
            started = time.perf_counter()
            client.infer(app.model, [tensor], headers=app.headers, client_timeout=60)
            times.append(time.perf_counter() - started)
    finally:
        app.set_model(idle_unload_s=0)
    return [("scale from zero → first answer", f"{statistics.median(times):.2f}", f"{max(times):.2f}", str(runs))]


async def _throughput(address: str, model: str, version: str, concurrency: int, total: int) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def worker(count: int) -> None:
        async with aioclient.InferenceServerClient(address) as client:
            for i in range(count):
                started = time.perf_counter()
                await client.infer(model, [_input(i)], model_version=version)
                latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


def bench_batching(app: Appliance, total: int) -> list[tuple[str, ...]]:
    profiles = [
        ("off", {"dynamic_batching": {"enabled": False}}),
        ("on, delay 0 µs (default)", {}),
        ("on, delay 100 µs", {"dynamic_batching": {"max_queue_delay_us": 100}}),
        ("on, delay 500 µs", {"dynamic_batching": {"max_queue_delay_us": 500}}),
        ("on, delay 2000 µs", {"dynamic_batching": {"max_queue_delay_us": 2000}}),
    ]
    rows = []
    for label, profile in profiles:
        app.set_model(serving_profile=profile)
        version, deployment = app.rollout(f"bench batching {label}")
        app.wait_ended(deployment["id"])
        asyncio.run(_throughput(app.info["node_triton_grpc"], app.model, str(version["number"]), 32, 640))  # warm
        latencies, elapsed = asyncio.run(_throughput(app.info["node_triton_grpc"], app.model, str(version["number"]), 32, total))
        rows.append((label, f"{len(latencies) / elapsed:.0f}", f"{pct(latencies, 50):.2f}", f"{pct(latencies, 95):.2f}"))
    app.set_model(serving_profile={})
    return rows


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n## {title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["rollouts", "cold", "zero", "batching"])
    parser.add_argument("--steady-s", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6400)
    args = parser.parse_args()
    app = Appliance()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} CPUs; model {app.model}; batch 1 per request")
    if "rollouts" in args.only:
        table(f"Latency through the gateway during rollouts (concurrency {CONCURRENCY}, closed loop)",
              ("strategy", "rollout s", "steady p50", "steady p99", "during p50", "during p99", "p99 ratio",
               "requests", "failed", "outcome"), bench_rollouts(app, args.steady_s))  # fmt: skip
    if "cold" in args.only:
        table("First request right after a rollout (direct to Triton, pinned version), ms",
              ("config", "first (median)", "first (max)", "same on warm version", "warm p50", "first / warm p50",
               "first / same on warm"), bench_cold_start(app, args.runs))  # fmt: skip
    if "zero" in args.only:
        table("Scale from zero (through the gateway), s", ("measurement", "median", "max", "runs"),
              bench_scale_from_zero(app, args.runs))  # fmt: skip
    if "batching" in args.only:
        table("Generated dynamic batching, concurrency 32, direct to Triton",
              ("dynamic batching", "req/s", "p50 ms", "p95 ms"), bench_batching(app, args.requests))  # fmt: skip


if __name__ == "__main__":
    main()
