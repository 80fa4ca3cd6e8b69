"""Model optimisation on the CPU, measured in one run against its own FP32 baseline.

1. MiniLM (all-MiniLM-L6-v2 as an ONNX graph) and the candidates the optimisation job
   makes of it (appliance/optimisation/quantise.py), plus ORT's default dynamic INT8
   ("naive": signed weights, one scale per tensor): size, and the accuracy gate on the
   sentence-pairs validation set (triton_models/minilm/validation.py) at the default 1 %
   (min cosine to FP32 and retrieval top-1 agreement, each at least 0.99 × FP32's 1.0).
   int8_mixed (the job's): smoothed, then dynamic INT8 with as few layers kept in float as
   that gate needs (leave-one-out ranking).
2. Serving: FP32 and the INT8 candidates loaded into one private Triton (the pinned CPU
   Triton, Python backend with the appliance's ONNX Runtime runner, as a CPU node serves
   an ONNX version; the default serving profile: one instance, dynamic batching), driven
   by stock gRPC clients at concurrency 16, one 48-token row per request: throughput,
   p50, p99. Same Triton, same run, one model at a time.
3. Digits (the demo classifier as ONNX): held-out accuracy of FP32, INT8 dynamic and
   INT8 static; points lost.
4. The seed article's claims ("75 % smaller, 2-4x throughput, under 1 % loss") against
   what was measured.

    .venv/bin/python bench/optimisation.py [--seconds 15] [--skip-mixed]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "appliance.settings")

import django  # noqa: E402

django.setup()

import onnx  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402

from appliance.catalog.models import Model, ModelVersion  # noqa: E402
from appliance.catalog.runtimes import ONNX_RUNNER  # noqa: E402
from appliance.catalog.tritonconfig import render_config  # noqa: E402
from appliance.core.process import free_port, wait_until  # noqa: E402
from appliance.core.tritonserver import TritonPorts, TritonSupervisor, triton_ready  # noqa: E402
from appliance.optimisation import gate, metrics, onnxrun, quantise  # noqa: E402
from appliance.optimisation.validation_data import parse_validation_set  # noqa: E402
from triton_models.digits import build as digits_build  # noqa: E402
from triton_models.digits import onnx as digits_onnx  # noqa: E402
from triton_models.minilm import build as minilm_build  # noqa: E402
from triton_models.minilm import validation as minilm_validation  # noqa: E402

CONCURRENCY = 16


def naive_dynamic(model: bytes) -> bytes:
    """ORT's quantize_dynamic with its defaults: what a user gets who tries it first."""
    with tempfile.TemporaryDirectory() as workdir:
        source, target = Path(workdir, "m.onnx"), Path(workdir, "q.onnx")
        onnx.save_model(onnx.load_model_from_string(model), source)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return target.read_bytes()


def place(repository: Path, name: str, model: bytes, signature: dict[str, Any], max_batch_size: int) -> None:
    """A version directory as a CPU node's agent writes it for an ONNX version."""
    version = ModelVersion(model=Model(name=name), number=1, format="onnx", artifact_sha256="0" * 64,
                           artifact_size=len(model), signature=signature, max_batch_size=max_batch_size)  # fmt: skip
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.onnx").write_bytes(model)
    (repository / name / "1" / "model.py").write_bytes(ONNX_RUNNER.read_bytes())
    (repository / name / "config.pbtxt").write_text(render_config(version, versions=[1], backends=("python",)))


def drive(address: str, model: str, rows: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    """Closed loop: CONCURRENCY clients, one row per request, for `seconds` after a warm-up."""
    stop, latencies, errors = threading.Event(), [[] for _ in range(CONCURRENCY)], [0] * CONCURRENCY
    measuring = threading.Event()

    def client(index: int) -> None:
        triton = grpcclient.InferenceServerClient(address)
        n = index
        while not stop.is_set():
            row = {k: v[n % len(v)][None, :] for k, v in rows.items()}
            n += CONCURRENCY
            tensors = []
            for name, datatype in (("input_ids", "INT64"), ("attention_mask", "FP32")):
                tensor = grpcclient.InferInput(name, list(row[name].shape), datatype)
                tensor.set_data_from_numpy(row[name])
                tensors.append(tensor)
            started = time.perf_counter()
            try:
                triton.infer(model, tensors, client_timeout=30)
            except Exception:
                errors[index] += 1
                continue
            if measuring.is_set():
                latencies[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # warm-up: connections, the instance's first batches
    measuring.set()
    began = time.perf_counter()
    time.sleep(seconds)
    measuring.clear()
    elapsed = time.perf_counter() - began
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    done = np.array([x for per in latencies for x in per]) * 1000
    return {"throughput": len(done) / elapsed, "p50": float(np.percentile(done, 50)),
            "p99": float(np.percentile(done, 99)), "errors": float(sum(errors))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip-mixed", action="store_true", help="no mixed-precision search (it takes minutes)")
    args = parser.parse_args()
    print(f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
          f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip

    # --- 1. MiniLM candidates and the gate ------------------------------------------------------
    fp32 = minilm_build.onnx_model()
    data = parse_validation_set(minilm_validation.validation_set(), metric="embedding_agreement")

    def values(model: bytes) -> dict[str, float]:
        return metrics.measure("embedding_agreement", onnxrun.run(onnxrun.session(model), data.inputs), data.expected)

    baseline = values(fp32)
    judge = lambda v: gate.verdict("embedding_agreement", v, baseline, 0.01)  # noqa: E731
    calibration = {k: v[:256] for k, v in data.inputs.items()}  # the job's default (OPTIMISE_CALIBRATION_ROWS)
    candidates: dict[str, bytes] = {"fp32": fp32}
    started = time.perf_counter()
    candidates["int8 naive (ORT defaults)"] = naive_dynamic(fp32)
    candidates["int8_dynamic"] = quantise.int8_dynamic(fp32)
    candidates["int8_static"] = quantise.int8_static(fp32, calibration)
    candidates["fp16"] = quantise.fp16(fp32)
    notes: dict[str, str] = {}
    if not args.skip_mixed:
        began = time.perf_counter()
        mixed = quantise.int8_mixed(fp32, calibration, lambda m: judge(values(m)))
        candidates["int8_mixed"] = mixed.model
        notes["int8_mixed"] = (f"kept in float: {', '.join(mixed.excluded) or 'none'}; {len(mixed.steps)} steps, "
                               f"search {time.perf_counter() - began:.0f} s")  # fmt: skip
    print(f"\ncandidates built in {time.perf_counter() - started:.0f} s; validation set: {data.rows} rows "
          f"(sentence pairs)\n")  # fmt: skip
    judged = {}
    for name, model in candidates.items():
        measured = values(model)
        judged[name] = (measured, judge(measured))
    print("| MiniLM candidate | size (MB) | size vs FP32 | min cosine | mean cosine | retrieval top-1 | gate (1 %) |")
    print("|---|---|---|---|---|---|---|")
    for name, model in candidates.items():
        v, verdict = judged[name]
        print(f"| {name} | {len(model) / 1e6:.1f} | {len(model) / len(fp32):.2f}x | {v['min_cosine']:.4f} | "
              f"{v['mean_cosine']:.4f} | {v['retrieval_top1_agreement']:.4f} | "
              f"{'passes' if verdict.passed else 'fails'} |")  # fmt: skip
    for name, note in notes.items():
        print(f"\n{name}: {note}")

    # --- 2. Through Triton at concurrency 16 ----------------------------------------------------
    served = ["fp32", "int8 naive (ORT defaults)", "int8_dynamic"] + (["int8_mixed"] if "int8_mixed" in candidates else [])
    names = {label: f"minilm_{i}" for i, label in enumerate(served)}
    rows = minilm_validation.tokenise(minilm_validation.sentences(200))
    with tempfile.TemporaryDirectory() as workdir:
        repository = Path(workdir) / "models"
        for label in served:
            place(repository, names[label], candidates[label], minilm_validation.SIGNATURE,
                  minilm_validation.MAX_BATCH_SIZE)  # fmt: skip
        ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
        triton = TritonSupervisor(node_name="bench-opt", repository=repository, ports=ports,
                                  log_path=Path(workdir) / "triton.log")  # fmt: skip
        triton.start()
        try:
            assert wait_until(lambda: triton_ready(ports.grpc_address), timeout=60), "Triton did not start"
            control = grpcclient.InferenceServerClient(ports.grpc_address)
            results = {}
            for label in served:
                control.load_model(names[label])
                results[label] = drive(ports.grpc_address, names[label], rows, args.seconds)
                control.unload_model(names[label])
        finally:
            triton.stop()
    base = results["fp32"]["throughput"]
    print(f"\n| Through Triton (c={CONCURRENCY}, 1 row/request) | throughput (rows/s) | vs FP32 | p50 ms | p99 ms | "
          "errors |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for label in served:
        r = results[label]
        print(f"| {label} | {r['throughput']:.1f} | {r['throughput'] / base:.2f}x | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['errors']:.0f} |")  # fmt: skip

    # --- 3. Digits ------------------------------------------------------------------------------
    weights, _ = digits_build.train()
    digits_fp32 = digits_onnx.graph(weights)
    digits_set = parse_validation_set(digits_onnx.validation_set(), metric="top1_accuracy")
    digits_cal = {k: v[:256] for k, v in digits_set.inputs.items()}
    print("\n| Digits candidate | size (KB) | held-out accuracy | points lost |")
    print("|---|---|---|---|")
    reference = None
    for label, model in (("fp32", digits_fp32), ("int8_dynamic", quantise.int8_dynamic(digits_fp32)),
                         ("int8_static", quantise.int8_static(digits_fp32, digits_cal))):  # fmt: skip
        accuracy = metrics.measure("top1_accuracy", onnxrun.run(model, digits_set.inputs), digits_set.expected)["top1_accuracy"]
        reference = accuracy if reference is None else reference
        print(f"| {label} | {len(model) / 1e3:.1f} | {accuracy:.4f} | {100 * (reference - accuracy):.2f} |")

    # --- 4. The seed's claims -------------------------------------------------------------------
    best = max((label for label in served if label != "fp32" and judged[label][1].passed),
               key=lambda label: results[label]["throughput"], default=None)  # fmt: skip
    print("\n| Seed claim | Measured here (MiniLM, CPU) |")
    print("|---|---|")
    dyn = "int8_dynamic"
    print(f"| 75 % smaller | {100 * (1 - len(candidates[dyn]) / len(fp32)):.0f} % smaller (INT8 dynamic; "
          f"static QDQ {100 * (1 - len(candidates['int8_static']) / len(fp32)):.0f} %, its embedding table stays float) |")
    print(f"| 2-4x throughput | {results[dyn]['throughput'] / base:.2f}x (INT8 dynamic through Triton at c=16) |")
    loss = 1 - judged[dyn][0]["min_cosine"]
    print(f"| under 1 % loss | INT8 dynamic: worst row's cosine to FP32 {judged[dyn][0]['min_cosine']:.4f} "
          f"({100 * loss:.1f} % off), retrieval agreement {judged[dyn][0]['retrieval_top1_agreement']:.4f} |")
    print(f"| (the gate's pick) | {best or 'none passes the 1 % gate'}"
          + (f": {results[best]['throughput'] / base:.2f}x, {len(candidates[best]) / len(fp32):.2f}x the size |" if best else " |"))


if __name__ == "__main__":
    main()
