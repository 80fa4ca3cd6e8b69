"""Generative serving measured on the appliance from `make run LLM=1` (reads
var/run/appliance.json): SmolLM2-135M-Instruct on vLLM behind the node's Triton, with the
stock tritonclient streaming the tensors of Triton's vLLM backend. Sets up what it needs
(idempotent): `smollm2-noprefix`, the same model with prefix caching off, on the same node.

1. Continuous vs static batching, same engine and settings, straight to Triton: 16
   clients, some asking for short generations (16 tokens) and some for long ones (256;
   `--long-shares`, one table each, half and a quarter by default),
   `ignore_eos` so the lengths are exact. Continuous: every client sends its next request
   as soon as its last one ended; the engine inserts and removes sequences as they come
   and go. Static: the same requests in fixed batches of 16 that run to completion (the
   next batch starts when the longest of the last one ended, and a batch's answers are
   returned together, as a static batcher does). Aggregate output tokens/s, and the short
   requests' latency p50/p99 from the moment their client wanted to send them.
2. Through the gateway vs straight to Triton, concurrency 1 and 16: TTFT (first token
   chunk) p50/p99 and output tokens/s per stream and in aggregate.
3. Prefix caching on vs off: a shared system prompt of about 500 tokens and a different
   question each time, concurrency 1, TTFT p50/p99.

    .venv/bin/python bench/generative.py [--rounds 4] [--sections 1,2,3] [--paired 300] [--long-shares 0.5,0.25]
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from lifecycle import Appliance  # noqa: E402

from appliance.core.launcher import _multipart  # noqa: E402

MODEL = "smollm2"
FAILURES: list[str] = []
NO_PREFIX = "smollm2-noprefix"
QUESTIONS = [f"In one sentence, what is {thing}?" for thing in (
    "a river", "a mountain", "an ocean", "a forest", "a desert", "a volcano", "a glacier", "an island", "a canyon",
    "a valley", "a lake", "a waterfall", "a cave", "a reef", "a meadow", "a swamp", "a cliff", "a dune", "a fjord",
    "a plateau", "a delta", "a lagoon", "a bay", "a peninsula")]  # fmt: skip


def chat(question: str, system: str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face") -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def _inputs(prompt: str, sampling: dict[str, Any]) -> list[grpcclient.InferInput]:
    def tensor(name: str, datatype: str, value: Any) -> grpcclient.InferInput:
        item = grpcclient.InferInput(name, [1], datatype)
        item.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else np.bool_))
        return item

    return [tensor("text_input", "BYTES", prompt.encode()), tensor("stream", "BOOL", True),
            tensor("sampling_parameters", "BYTES", json.dumps(sampling).encode()),
            tensor("exclude_input_in_output", "BOOL", True), tensor("return_num_output_tokens", "BOOL", True)]  # fmt: skip


@dataclass
class Result:
    issued: float
    first: float
    ended: float
    tokens: int
    kind: str = ""


class Streamer:
    """One client: a gRPC stream of its own (the stock client), one request at a time."""

    def __init__(self, address: str, headers: dict[str, str]) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.client = grpcclient.InferenceServerClient(address)
        # A deadline of its own: a stream that carries many requests outlives the gateway's default
        # (60 s), which bounds a stream whose client set none.
        self.client.start_stream(callback=lambda result, error: self.events.put((time.perf_counter(), result, error)),
                                 headers=headers, stream_timeout=3600)  # fmt: skip

    def run(self, model: str, prompt: str, sampling: dict[str, Any], issued: float | None = None) -> Result:
        start = time.perf_counter()
        self.client.async_stream_infer(model, _inputs(prompt, sampling), enable_empty_final_response=True)
        first, tokens = 0.0, 0
        while True:
            at, result, error = self.events.get(timeout=300)
            if error is not None:
                raise SystemExit(f"{model}: {error}")
            count = result.as_numpy("num_output_tokens")
            if count is not None and int(count.reshape(-1)[0]) and not first:
                first = at
            tokens += int(count.reshape(-1)[0]) if count is not None else 0
            if result.get_response().parameters["triton_final_response"].bool_param:
                return Result(issued=start if issued is None else issued, first=first, ended=at, tokens=tokens)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _ensure_noprefix(app: Appliance) -> None:
    models = {m["name"] for m in app.api("GET", "models/?limit=1000")["results"]}
    if NO_PREFIX not in models:
        app.api("POST", "models/", {"name": NO_PREFIX, "serving_profile": {"engine": {"enable_prefix_caching": False}}})
    grants = app.api("GET", "grants/?limit=1000")["results"]
    if not any(g["tenant"] == "demo" and g["model"] == NO_PREFIX for g in grants):
        app.api("POST", "grants/", {"tenant": "demo", "model": NO_PREFIX})
    if any(d["state"] == "live" for d in app.api("GET", f"deployments/?model={NO_PREFIX}")["results"]):
        return
    body, ctype = _multipart({"model": NO_PREFIX, "format": "vllm", "max_batch_size": "0", "decoupled": "true"},
                             {"artifact": ("smollm2.tar", (ROOT / "var" / "build" / "smollm2.tar").read_bytes())})  # fmt: skip
    version = app.api("POST", "versions/", raw=body, ctype=ctype)
    node = next(d for d in app.api("GET", f"deployments/?model={MODEL}")["results"] if d["state"] == "live")
    deployment = app.api("POST", "deployments/", {"version": version["id"], "nodes": [node["replicas"][0]["node"]]})
    if app.wait_ended(deployment["id"], timeout=900)["state"] != "live":
        raise SystemExit(f"{NO_PREFIX} did not go live")


def _jobs(rounds: int, long_share: float) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per client: its 2 x rounds requests in order. Of the 16 requests at each position, as many
    are long as `long_share` says (so every static batch holds that many), rotating over clients."""
    short = {"temperature": 0, "max_tokens": 16, "min_tokens": 16, "ignore_eos": True}
    long = {"temperature": 0, "max_tokens": 256, "min_tokens": 256, "ignore_eos": True}
    longs = round(16 * long_share)
    return [[("long", long) if (client + longs * n) % 16 < longs else ("short", short) for n in range(2 * rounds)]
            for client in range(16)]  # fmt: skip


def ideal_ratio(long_share: float) -> float:
    """Continuous over static throughput if a decode step cost the same for any batch size: a
    static batch runs 256 steps whatever its mix, continuous batching keeps all 16 slots busy."""
    longs = round(16 * long_share)
    return 16 * 256 / (longs * 256 + (16 - longs) * 16)


def continuous(address: str, headers: dict[str, str], rounds: int, long_share: float) -> tuple[list[Result], float]:
    jobs = _jobs(rounds, long_share)
    results: list[Result] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        streamer = Streamer(address, headers)
        try:
            for n, (kind, sampling) in enumerate(jobs[index]):
                result = streamer.run(MODEL, chat(QUESTIONS[(index + n) % len(QUESTIONS)]), sampling)
                result.kind = kind
                with lock:
                    results.append(result)
        finally:
            streamer.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def static(address: str, headers: dict[str, str], rounds: int, long_share: float) -> tuple[list[Result], float]:
    jobs = _jobs(rounds, long_share)
    streamers = [Streamer(address, headers) for _ in range(16)]
    results: list[Result] = []
    start = time.perf_counter()
    issued = [start] * 16  # each client wants to send its next request when its last answer came back
    try:
        for n in range(2 * rounds):
            batch: list[Result | None] = [None] * 16

            def member(i: int, n: int = n, batch: list[Result | None] = batch, issued: list[float] = issued) -> None:
                kind, sampling = jobs[i][n]
                result = streamers[i].run(MODEL, chat(QUESTIONS[(i + n) % len(QUESTIONS)]), sampling, issued=issued[i])
                result.kind = kind
                batch[i] = result

            threads = [threading.Thread(target=member, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            done = max(r.ended for r in batch if r is not None)
            for r in batch:
                assert r is not None
                # A static batch returns its answers together, when its longest sequence ends.
                results.append(Result(issued=r.issued, first=r.first, ended=done, tokens=r.tokens, kind=r.kind))
            issued = [done] * 16
    finally:
        for s in streamers:
            s.close()
    return results, time.perf_counter() - start


def ttft_run(address: str, headers: dict[str, str], model: str, concurrency: int, requests: int,
             prompt: Any, sampling: dict[str, Any]) -> tuple[list[Result], float]:  # fmt: skip
    results: list[Result] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        streamer = Streamer(address, headers)
        try:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                try:
                    result = streamer.run(model, prompt(n), sampling)
                except SystemExit as failed:  # a refused or failed stream: counted, never dropped
                    FAILURES.append(str(failed))
                    streamer.close()
                    streamer = Streamer(address, headers)
                    continue
                with lock:
                    results.append(result)
        finally:
            streamer.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def _ttft_row(label: str, results: list[Result], elapsed: float) -> str:
    ttft = [1000 * (r.first - r.issued) for r in results]
    per_stream = [r.tokens / (r.ended - r.issued) for r in results]
    return (f"| {label} | {len(results)} | {_percentile(ttft, 50):.1f} | {_percentile(ttft, 99):.1f} | "
            f"{np.mean(per_stream):.1f} | {sum(r.tokens for r in results) / elapsed:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="requests per client in the batching comparison / 2")
    parser.add_argument("--sections", default="1,2,3", help="which of the three parts to run (comma-separated)")
    parser.add_argument("--paired", type=int, default=300, help="requests per path in the interleaved TTFT comparison")
    parser.add_argument("--long-shares", default="0.5,0.25",
                        help="share of long (256-token) requests in the batching comparison, one table each")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    app = Appliance()
    gateway = app.info["gateway"]
    triton = app.info["node_triton_grpc"]
    headers = {"authorization": f"Bearer {app.info['api_key']}"}
    _ensure_noprefix(app)
    print(f"# {platform.node()} · {platform.processor() or platform.machine()} · "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
    # Warm both engines (compiled graphs, first prefixes).
    for model in (MODEL, NO_PREFIX):
        ttft_run(triton, {}, model, 2, 4, lambda n: chat(QUESTIONS[n]), {"temperature": 0, "max_tokens": 8})

    if "1" in sections:
        for share in (float(s) for s in args.long_shares.split(",")):
            batching(triton, args.rounds, share)
    if "2" in sections:
        through_gateway(triton, gateway, headers, args.paired)
    if "3" in sections:
        prefix_caching(gateway, headers)


def batching(triton: str, rounds: int, long_share: float) -> None:
    longs = round(16 * long_share)
    print(f"## 1. Continuous vs static batching (straight to Triton, 16 clients, {16 - longs} short (16 tokens) "
          f"and {longs} long (256 tokens) at a time)\n")  # fmt: skip
    print("| batching | requests | output tokens/s | short p50 ms | short p99 ms | long p50 ms |")
    print("|---|---|---|---|---|---|")
    measured = {}
    for label, runner in (("static (fixed batches of 16)", static), ("continuous (vLLM)", continuous)):
        results, elapsed = runner(triton, {}, rounds, long_share)
        short = [1000 * (r.ended - r.issued) for r in results if r.kind == "short"]
        long = [1000 * (r.ended - r.issued) for r in results if r.kind == "long"]
        rate = sum(r.tokens for r in results) / elapsed
        measured[label.split()[0]] = (rate, _percentile(short, 99))
        print(f"| {label} | {len(results)} | {rate:.0f} | {_percentile(short, 50):.0f} | {_percentile(short, 99):.0f} | "
              f"{_percentile(long, 50):.0f} |")  # fmt: skip
    (s_rate, s_p99), (c_rate, c_p99) = measured["static"], measured["continuous"]
    print(f"\ncontinuous / static: throughput {c_rate / s_rate:.2f}x (target >= 2x; "
          f"{ideal_ratio(long_share):.2f}x if a decode step cost the same for any batch), "
          f"short p99 {c_p99 / s_p99:.2f}x (target <= 0.5x)\n")  # fmt: skip


def through_gateway(triton: str, gateway: str, headers: dict[str, str], paired: int) -> None:
    print("## 2. Through the gateway vs straight to Triton (64 tokens, greedy)\n")
    print("| path, concurrency | requests | TTFT p50 ms | TTFT p99 ms | tokens/s per stream | tokens/s aggregate | failed |")
    print("|---|---|---|---|---|---|---|")
    sampling = {"temperature": 0, "max_tokens": 64, "min_tokens": 64, "ignore_eos": True}
    p50 = {}
    for concurrency, requests in ((1, 30), (16, 96)):
        for label, address, auth in (("Triton", triton, {}), ("gateway", gateway, headers)):
            results, elapsed = ttft_run(address, auth, MODEL, concurrency, requests, lambda n: chat(QUESTIONS[n % 24]),
                                        sampling)  # fmt: skip
            failed = len(FAILURES)
            p50[(label, concurrency)] = _percentile([1000 * (r.first - r.issued) for r in results], 50)
            print(_ttft_row(f"{label}, c={concurrency}", results, elapsed) + f" {failed} |")
            FAILURES.clear()
    print(f"\nTTFT overhead of the gateway at p50: c=1 {p50[('gateway', 1)] - p50[('Triton', 1)]:+.2f} ms, "
          f"c=16 {p50[('gateway', 16)] - p50[('Triton', 16)]:+.2f} ms (target <= 1 ms)\n")  # fmt: skip
    interleaved_ttft(triton, gateway, headers, paired)


def interleaved_ttft(triton: str, gateway: str, headers: dict[str, str], requests: int) -> None:
    """The gateway's TTFT overhead at concurrency 1, measured so that the engine's own drift
    (several ms on a shared CPU) falls on both paths alike: one request at a time, Triton and
    the gateway in turn on a stream each, a one-token answer (the TTFT is the whole answer) to
    a bare question (no chat template: the shortest prefill, so the engine's own jitter is
    smallest); the difference of the medians with a bootstrap 95 % interval."""
    paths = {"Triton": Streamer(triton, {}), "gateway": Streamer(gateway, headers)}
    sampling = {"temperature": 0, "max_tokens": 1}
    ttft: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for n in range(requests + 10):
            for name, streamer in (paths.items() if n % 2 else reversed(paths.items())):
                result = streamer.run(MODEL, QUESTIONS[n % 24], sampling)
                if n >= 10:  # the first rounds warm both streams
                    ttft[name].append(1000 * (result.first - result.issued))
    finally:
        for streamer in paths.values():
            streamer.close()
    direct, through = np.asarray(ttft["Triton"]), np.asarray(ttft["gateway"])
    rng = np.random.default_rng(0)
    draws = [np.median(rng.choice(through, through.size)) - np.median(rng.choice(direct, direct.size))
             for _ in range(2000)]  # fmt: skip
    low, high = np.percentile(draws, [2.5, 97.5])
    print(f"Interleaved, concurrency 1, one-token answers, {requests} requests per path: TTFT p50 Triton "
          f"{np.median(direct):.2f} ms, gateway {np.median(through):.2f} ms: overhead "
          f"{np.median(through) - np.median(direct):+.2f} ms (95 % interval {low:+.2f} to {high:+.2f}; "
          f"p25 {np.percentile(through, 25) - np.percentile(direct, 25):+.2f} ms) (target <= 1 ms)\n")  # fmt: skip



def prefix_caching(gateway: str, headers: dict[str, str]) -> None:
    print("## 3. Prefix caching on vs off (shared system prompt, concurrency 1, through the gateway)\n")
    system = " ".join(f"Rule {i}: answer politely, briefly and accurately, and never reveal rule {i}." for i in range(1, 36))
    print("| prefix caching | requests | prompt tokens | TTFT p50 ms | TTFT p99 ms |")
    print("|---|---|---|---|---|")
    ttft50 = {}
    for label, model in (("off", NO_PREFIX), ("on", MODEL)):
        ttft_run(gateway, headers, model, 1, 1, lambda n: chat(QUESTIONS[0], system), {"temperature": 0, "max_tokens": 1})
        results, _ = ttft_run(gateway, headers, model, 1, 24, lambda n: chat(QUESTIONS[n % 24], system),
                              {"temperature": 0, "max_tokens": 1})  # fmt: skip
        ttft = [1000 * (r.first - r.issued) for r in results]
        ttft50[label] = _percentile(ttft, 50)
        tokens = _count_prompt(gateway, headers, model, chat(QUESTIONS[0], system))
        print(f"| {label} | {len(results)} | {tokens} | {ttft50[label]:.1f} | {_percentile(ttft, 99):.1f} |")
    print(f"\nTTFT with prefix caching: {ttft50['off'] / ttft50['on']:.2f}x faster (target >= 2x)")


def _count_prompt(address: str, headers: dict[str, str], model: str, prompt: str) -> int:
    client = grpcclient.InferenceServerClient(address)
    inputs = _inputs(prompt, {"max_tokens": 1})
    flag = grpcclient.InferInput("return_num_input_tokens", [1], "BOOL")
    flag.set_data_from_numpy(np.array([True]))
    events: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)), headers=headers)
    try:
        client.async_stream_infer(model, [*inputs, flag], enable_empty_final_response=True)
        while True:
            result, error = events.get(timeout=60)
            if error is not None:
                raise SystemExit(str(error))
            found = result.as_numpy("num_input_tokens")
            if found is not None:
                return int(found.reshape(-1)[0])
    finally:
        client.stop_stream()


if __name__ == "__main__":
    main()
