"""The gateway's caches, measured on the appliance from `make run` (reads
var/run/appliance.json); sets up what it needs (idempotent): the minilm embedder,
`slowtext` (a stand-in for an expensive text model: 40 ms per answer) with the
semantic cache on, `slowtext-exact` with the exact response cache on, and a tenant.

1. Threshold sweep: every question of triton_models/minilm/semantic_eval.json is
   embedded by minilm on the node's Triton; each paraphrase, hard negative and
   unrelated question is matched as the gateway matches it (nearest 3, similarity
   threshold, then the word guard): hit and wrong-hit rates per threshold, for the
   main set and the held-out set, with and without the guard.
2. Latency at concurrency 1 through the gateway, same run: a semantic hit (embedding
   included) vs a miss on slowtext; an exact-cache hit vs a miss on slowtext-exact
   and on the demo digits model; and the embedder alone, straight to Triton.

    .venv/bin/python bench/semantic_cache.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from lifecycle import IMAGES, Appliance  # noqa: E402

from appliance.core.launcher import _multipart  # noqa: E402

EVAL = json.loads((ROOT / "triton_models" / "minilm" / "semantic_eval.json").read_text())
TENANT = "bench-cache"


def _deploy(app: Appliance, name: str, artifact: bytes, manifest: dict[str, object], **model_fields: object) -> None:
    models = {m["name"] for m in app.api("GET", "models/?limit=1000")["results"]}
    if name not in models:
        app.api("POST", "models/", {"name": name, **model_fields})
    elif model_fields:
        app.api("PATCH", f"models/{name}/", model_fields)
    if any(d["state"] == "live" for d in app.api("GET", f"deployments/?model={name}")["results"]):
        return
    body, ctype = _multipart(
        {"model": name, "format": "python", "signature": json.dumps(manifest["signature"]),
         "max_batch_size": str(manifest["max_batch_size"]), "decoupled": "false"},
        {"artifact": (f"{name}.tar.gz", artifact)},
    )  # fmt: skip
    version = app.api("POST", "versions/", raw=body, ctype=ctype)
    node = app.serving()["replicas"][0]["node"]
    deployment = app.api("POST", "deployments/", {"version": version["id"], "nodes": [node]})
    if app.wait_ended(deployment["id"])["state"] != "live":
        raise SystemExit(f"{name} did not go live")


def setup(app: Appliance) -> str:
    from triton_models.minilm import build as minilm_build
    from triton_models.packaging import pack_files

    models = ROOT / "triton_models"
    _deploy(app, "minilm", minilm_build.pack(), json.loads((models / "minilm" / "manifest.json").read_text()))
    text = pack_files({"model.py": (models / "slowtext" / "model.py").read_bytes()})
    manifest = json.loads((models / "slowtext" / "manifest.json").read_text())
    _deploy(app, "slowtext", text, manifest)
    app.api("PATCH", "models/slowtext/", {"semantic_cache": {"threshold": 0.85}})
    _deploy(app, "slowtext-exact", text, manifest, response_cache=True)
    tenants = {t["slug"] for t in app.api("GET", "tenants/?limit=1000")["results"]}
    if TENANT not in tenants:
        app.api("POST", "tenants/", {"slug": TENANT, "name": TENANT})
    grants = {(g["tenant"], g["model"]) for g in app.api("GET", "grants/?limit=1000")["results"]}
    for model in ("slowtext", "slowtext-exact", app.model):
        if (TENANT, model) not in grants:
            app.api("POST", "grants/", {"tenant": TENANT, "model": model})
    key = app.api("POST", "api-keys/", {"tenant": TENANT, "name": f"bench-{time.time():.0f}"})["key"]
    time.sleep(2.5)  # two gateway snapshot periods
    return str(key)


def embed(triton: grpcclient.InferenceServerClient, texts: list[str]) -> np.ndarray:
    out = []
    for text in texts:
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        out.append(triton.infer("minilm", [tensor]).as_numpy("EMBEDDING")[0])
    return np.stack(out)


def sweep(triton: grpcclient.InferenceServerClient) -> None:
    from appliance.gateway.semantic import CANDIDATES, compatible

    parts = {"main": EVAL["items"], "held-out": EVAL["heldout_items"]}
    items = [item for part in parts.values() for item in part]
    base = [item["q"] for item in items]
    cached = embed(triton, base)
    queries = []
    offset = 0
    for part, part_items in parts.items():
        for index, item in enumerate(part_items):
            for kind in ("paraphrases", "negatives"):
                queries += [(part, offset + index, kind, text) for text in item[kind]]
        offset += len(part_items)
    queries += [("main", -1, "unrelated", text) for text in EVAL["unrelated"]]
    vectors = embed(triton, [q[3] for q in queries])
    print(f"\n{'set':<9} {'guard':<6} {'threshold':>9} {'paraphrase hits':>16} {'wrong hits':>12} {'of them hard negatives':>23}")
    for part in parts:
        for guard in (False, True):
            for threshold in (0.75, 0.80, 0.82, 0.85, 0.88, 0.90, 0.95):
                hits = wrong = wrong_neg = paraphrases = negatives = asked = 0
                for (qpart, owner, kind, text), vector in zip(queries, vectors, strict=True):
                    if qpart != part:
                        continue
                    asked += 1
                    paraphrases += kind == "paraphrases"
                    negatives += kind == "negatives"
                    similarities = cached @ vector
                    found = None
                    for j in np.argsort(-similarities)[:CANDIDATES]:
                        if similarities[j] < threshold:
                            break
                        if not guard or compatible(text, base[j])[0]:
                            found = int(j)
                            break
                    if found is None:
                        continue
                    if kind == "paraphrases" and found == owner:
                        hits += 1
                    else:
                        wrong += 1
                        wrong_neg += kind == "negatives"
                print(f"{part:<9} {'on' if guard else 'off':<6} {threshold:>9.2f} {hits:>7}/{paraphrases:<3} {hits / paraphrases:>4.0%} "
                      f"{wrong:>4}/{asked:<3} {wrong / asked:>4.1%} {wrong_neg:>12}/{negatives}")  # fmt: skip


def _ask(client: grpcclient.InferenceServerClient, model: str, text: str, headers: dict[str, str]) -> float:
    tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    started = time.perf_counter()
    client.infer(model, [tensor], headers=headers)
    return (time.perf_counter() - started) * 1000


def _digits(client: grpcclient.InferenceServerClient, model: str, i: int, headers: dict[str, str], salt: float = 0.0) -> float:
    """Image i; a run's salt (added to one pixel) keeps an earlier run's cached answers out."""
    image = IMAGES[i % len(IMAGES)].reshape(1, 64).astype(np.float32)
    image[0, 0] += salt
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(image)
    started = time.perf_counter()
    client.infer(model, [tensor], headers=headers)
    return (time.perf_counter() - started) * 1000


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency(app: Appliance, key: str, n: int) -> None:
    gateway = grpcclient.InferenceServerClient(app.info["gateway"])
    headers = {"authorization": f"Bearer {key}"}
    run = f"{time.time():.0f}"
    rows = []
    # Semantic: a question asked once (a miss: embedding + the model), then a paraphrase that hits.
    item = EVAL["items"][2]  # "What is the daily limit for ATM withdrawals?"
    _ask(gateway, "slowtext", f"{item['q']}", headers)
    hits = [_ask(gateway, "slowtext", "What's the maximum ATM withdrawal per day?", headers) for _ in range(n)]
    misses = [_ask(gateway, "slowtext", f"Unique question {run}-{i}: what is the status of ticket {i}?", headers) for i in range(n // 4)]
    rows.append(("slowtext, semantic cache (embedding included)", hits, misses))
    exact_hits = [_ask(gateway, "slowtext-exact", "What's the maximum ATM withdrawal per day?", headers) for _ in range(n)]
    exact_misses = [_ask(gateway, "slowtext-exact", f"Unique {run}-{i}", headers) for i in range(n // 4)]
    rows.append(("slowtext-exact, exact cache", exact_hits, exact_misses))
    app.api("PATCH", f"models/{app.model}/", {"response_cache": True})
    time.sleep(2.5)
    try:
        salt = (int(run) % 100_000) / 1e6
        _digits(gateway, app.model, 0, headers, salt)
        digits_hits = [_digits(gateway, app.model, 0, headers, salt) for _ in range(n)]
        digits_misses = [_digits(gateway, app.model, i, headers, salt) for i in range(1, n)]  # distinct images: misses
        rows.append((f"{app.model} (1 ms model), exact cache", digits_hits, digits_misses))
    finally:
        app.api("PATCH", f"models/{app.model}/", {"response_cache": False})
    triton = grpcclient.InferenceServerClient(app.info["node_triton_grpc"])
    embeds = []
    for i in range(n):
        started = time.perf_counter()
        embed(triton, [f"How do I reset the password of account {i}?"])
        embeds.append((time.perf_counter() - started) * 1000)
    print(f"\n{'model, cache':<48} {'hit p50':>8} {'hit p99':>8} {'miss p50':>9} {'miss p99':>9}  hit p99 < miss p50 / 2")
    for name, hit, miss in rows:
        print(f"{name:<48} {pct(hit, 50):>7.2f} {pct(hit, 99):>8.2f} {pct(miss, 50):>9.2f} {pct(miss, 99):>9.2f}  "
              f"{'yes' if pct(hit, 99) < pct(miss, 50) / 2 else 'no'}")  # fmt: skip
    print(f"{'minilm alone, straight to Triton':<48} {'':>8} {'':>8} {pct(embeds, 50):>9.2f} {pct(embeds, 99):>9.2f}  (ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "appliance.settings")
    import django

    django.setup()
    app = Appliance()
    key = setup(app)
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} CPUs; Triton on the CPU; concurrency 1; "
          f"{args.requests} hits per row")  # fmt: skip
    sweep(grpcclient.InferenceServerClient(app.info["node_triton_grpc"]))
    latency(app, key, args.requests)


if __name__ == "__main__":
    main()
