"""The accuracy gate on a generative model, in one run against its own parent.

SmolLM2-135M-Instruct (`make smollm2`) is the parent; each candidate is the same weights
with config.json's RoPE base (`rope_theta`, 100000 in the parent) changed — a conversion
gone subtly wrong: the model still loads and answers, but sees positions differently.
Each version is served by its own vLLM engine exactly as a gate run serves it
(appliance/optimisation/textgen.py: the nodes' command line, rows one at a time, greedy)
and measured on the demo's two validation sets (triton_models/smollm2/validation.py):
perplexity of reference answers to 12 factual questions, and exact match against the
parent's own greedy answers (taken from the parent's engine in the same run). The gate's
verdict at the default 1 % is printed per candidate, with the engine's start and the
measuring times.

    .venv/bin/python bench/generative_gate.py [--thetas 99000,50000,1000] [--compiled]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "appliance.settings")

import django  # noqa: E402

django.setup()

from appliance.catalog.generative import engine_spec, facts_from_artifact  # noqa: E402
from appliance.optimisation import gate, textgen  # noqa: E402
from appliance.optimisation.validation_data import parse_validation_set  # noqa: E402
from triton_models.smollm2 import validation as sets  # noqa: E402

ARTIFACT = Path(__file__).resolve().parents[1] / "var" / "build" / "smollm2.tar"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thetas", default="99000,50000,1000", help="RoPE bases of the candidates")
    parser.add_argument("--compiled", action="store_true", help="the compiled engine (default: eager, as the e2e fleet)")
    args = parser.parse_args()
    if not ARTIFACT.exists():
        raise SystemExit(f"{ARTIFACT} is missing: run `make smollm2`")
    parent_bytes = ARTIFACT.read_bytes()
    engine = engine_spec({"engine": {"enforce_eager": not args.compiled, "kv_cache_mib": 512, "max_model_len": 2048,
                                     "max_num_seqs": 16}})  # fmt: skip
    facts_set = parse_validation_set(sets.perplexity_set(), metric="perplexity")
    rows: list[dict[str, object]] = []
    parent: dict[str, dict[str, float]] = {}
    own_set = None
    candidates = [("parent (rope_theta 100000)", parent_bytes)]
    candidates += [(f"rope_theta {float(t):g}", sets.with_rope_theta(parent_bytes, float(t))) for t in args.thetas.split(",")]
    for label, artifact in candidates:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch, textgen.Engine(
            artifact=artifact, facts=facts_from_artifact(artifact), engine=engine, workdir=Path(scratch) / "engine"
        ) as served:
            start_s = time.perf_counter() - started
            if own_set is None:
                answers = [served.post("/v1/completions", {"model": textgen.SERVED_NAME, "prompt": sets.chat(q),
                                                           "max_tokens": 24, "temperature": 0})["choices"][0]["text"]
                           for q, _ in sets.FACTS]  # fmt: skip
                own_set = parse_validation_set(sets.exact_match_set(answers), metric="exact_match")
            t0 = time.perf_counter()
            ppl = textgen.measure(served, "perplexity", facts_set)
            t1 = time.perf_counter()
            em = textgen.measure(served, "exact_match", own_set)
            t2 = time.perf_counter()
        if not parent:
            parent = {"perplexity": ppl, "exact_match": em}
        verdicts = [gate.verdict("perplexity", ppl, parent["perplexity"]), gate.verdict("exact_match", em, parent["exact_match"])]
        rows.append({"version": label, "start_s": start_s, "perplexity": ppl["perplexity"], "ppl_s": t1 - t0,
                     "exact_match": em["exact_match"], "em_s": t2 - t1, "passes": all(v.passed for v in verdicts)})  # fmt: skip
        print(f"{label}: done", flush=True)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {cpu}, {os.cpu_count()} CPUs; "
          f"{textgen.engine_description()}, {'compiled' if args.compiled else 'eager'} engine; "
          f"{facts_set.rows} rows per set\n")  # fmt: skip
    print("| version | engine start s | perplexity | (s) | exact match | (s) | gate at 1 % |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['version']} | {r['start_s']:.1f} | {r['perplexity']:.3f} | {r['ppl_s']:.1f} | "
              f"{r['exact_match']:.3f} | {r['em_s']:.1f} | {'passes' if r['passes'] else 'fails'} |")


if __name__ == "__main__":
    main()
