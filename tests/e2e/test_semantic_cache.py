"""The semantic cache end to end: all-MiniLM-L6-v2 served on a real Triton embeds
each text; the gateway answers close, compatible questions from Redis for the same
tenant and version only; and the evaluation set (paraphrases, hard negatives,
unrelated questions) is run through the real path, reporting hit and wrong-hit
rates at the default threshold.

Its own fleet (one CPU node with a real Triton, a control worker, the gateway).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from appliance.gateway.semantic import DEFAULT_THRESHOLD
from tests.e2e.fleet import Fleet, wait_for
from tests.e2e.operator import Operator
from tests.factories import MODELS_DIR, python_artifact
from triton_models.minilm import build as minilm_build
from triton_models.packaging import pack_files

pytestmark = [pytest.mark.e2e]

EVAL = json.loads((MODELS_DIR / "minilm" / "semantic_eval.json").read_text())


@pytest.fixture(scope="module")
def fleet(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet.running(tmp_path_factory.mktemp("semantic"), {"sem-node": ()}) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def world(fleet: Fleet) -> dict[str, Any]:
    sam = Operator("sam")
    sam.post("models/", {"name": "minilm", "description": "sentence embeddings for the semantic cache"})
    sam.post("models/", {"name": "slowtext"})
    embedder = sam.upload("minilm", minilm_build.pack(), note="all-MiniLM-L6-v2")
    text = sam.upload("slowtext", pack_files({"model.py": (MODELS_DIR / "slowtext" / "model.py").read_bytes()}))
    for version in (embedder, text):
        deployment = sam.post("deployments/", {"version": version["id"], "nodes": ["sem-node"]})
        assert sam.wait_ended(deployment["id"], fleet, timeout=180)["state"] == "live"
    response = sam.client.patch("/api/v1/models/slowtext/", {"semantic_cache": {"threshold": DEFAULT_THRESHOLD}}, format="json")
    assert response.status_code == 200, response.content
    keys = {}
    for name in ("acme", "globex", "evalco"):  # tenants of this module only (e2e modules share a database)
        slug = f"sem-{name}"
        sam.post("tenants/", {"slug": slug, "name": slug})
        sam.post("grants/", {"tenant": slug, "model": "slowtext"})
        keys[name] = sam.post("api-keys/", {"tenant": slug, "name": "app"})["key"]
    sam.post("models/", {"name": "numeric"})
    sam.upload("numeric", python_artifact(), like="digits")
    refused = sam.client.patch("/api/v1/models/numeric/", {"semantic_cache": {"threshold": 0.9}}, format="json")
    assert refused.status_code == 400 and "only input is text" in refused.content.decode()
    return {"sam": sam, "keys": keys, "node": fleet.node_ports["sem-node"]}


def _ask(fleet: Fleet, key: str, text: str) -> tuple[str, float]:
    client = grpcclient.InferenceServerClient(fleet.gateway)
    tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    started = time.perf_counter()
    result = client.infer("slowtext", [tensor], headers={"authorization": f"Bearer {key}"})
    return result.as_numpy("ANSWER").reshape(-1)[0].decode(), time.perf_counter() - started


def _triton_count(world: dict[str, Any], version: str) -> int:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{world['node']['grpc']}")
    return int(client.get_inference_statistics("slowtext", version).model_stats[0].inference_stats.success.count)


def _settled(world: dict[str, Any], version: str) -> int:
    """Triton counts a request a moment after answering it: wait until the count holds still."""
    seen = [-1]

    def still() -> bool:
        now = _triton_count(world, version)
        stable, seen[0] = now == seen[0], now
        return stable

    wait_for("Triton's count to settle", still, timeout=10)
    return seen[0]


def test_the_served_embedder_reproduces_the_reference_implementation(fleet: Fleet, world: dict[str, Any]) -> None:
    """The ONNX graph (graph.py) under ONNX Runtime on Triton against embeddings computed independently with
    Hugging Face transformers from the same files (reference_embeddings.json)."""
    reference = json.loads((MODELS_DIR / "minilm" / "reference_embeddings.json").read_text())
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{world['node']['grpc']}")
    for text, expected in zip(reference["texts"], reference["embeddings"], strict=True):
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        got = direct.infer("minilm", [tensor]).as_numpy("EMBEDDING")[0]
        assert got.shape == (384,) and np.abs(got - np.array(expected, dtype=np.float32)).max() < 1e-5, text


def test_a_paraphrase_is_answered_from_the_cache_for_the_same_tenant_only(fleet: Fleet, world: dict[str, Any]) -> None:
    acme, globex = world["keys"]["acme"], world["keys"]["globex"]
    question, paraphrase = "What is the daily limit for ATM withdrawals?", "What's the maximum ATM withdrawal per day?"
    first, _ = _ask(fleet, acme, question)
    assert first == f"v1 answer to: {question}"
    before = _settled(world, "1")
    again, _ = _ask(fleet, acme, paraphrase)
    assert again == first, "the paraphrase got the cached answer"
    assert _settled(world, "1") == before, "and the model never saw it"
    theirs, _ = _ask(fleet, globex, paraphrase)
    assert theirs == f"v1 answer to: {paraphrase}", "never across tenants"
    edited, _ = _ask(fleet, acme, "What is the monthly limit for ATM withdrawals?")
    assert edited == "v1 answer to: What is the monthly limit for ATM withdrawals?", "a small edit is not a hit"


def test_a_new_version_never_answers_from_the_old_versions_cache(fleet: Fleet, world: dict[str, Any]) -> None:
    sam, acme = world["sam"], world["keys"]["acme"]
    question = "Is the Main Street branch open on Sunday?"
    assert _ask(fleet, acme, question)[0] == f"v1 answer to: {question}"
    assert _ask(fleet, acme, "Does the Main Street branch open on Sundays?")[0] == f"v1 answer to: {question}"
    second = sam.upload("slowtext", pack_files({"model.py": (MODELS_DIR / "slowtext" / "model.py").read_bytes()}),
                        parent=sam.get("versions/?model=slowtext")["results"][0]["id"], change_kind="new_weights")  # fmt: skip
    deployment = sam.post("deployments/", {"version": second["id"]})
    assert sam.wait_ended(deployment["id"], fleet, timeout=120)["state"] == "live"
    answer = wait_for("version 2 to answer", lambda: (a := _ask(fleet, acme, "Does the Main Street branch open on Sundays?")[0])
                      .startswith("v2") and a)  # fmt: skip
    assert answer == "v2 answer to: Does the Main Street branch open on Sundays?", "the old version's answer is not served"


def test_evaluation_set_hit_and_wrong_hit_rates(fleet: Fleet, world: dict[str, Any]) -> None:
    """Every question of the set (and of its held-out part, written after the threshold
    and guard were chosen) is asked once, filling the cache of a fresh tenant; then every
    paraphrase, hard negative and unrelated question: a hit on its own question counts
    as a hit, any other hit as a wrong hit."""
    key = world["keys"]["evalco"]
    served = _ask(fleet, key, "warm-up")[0].split(" answer to: ")[0]  # the answering version's prefix
    items = [("main", item) for item in EVAL["items"]] + [("held-out", item) for item in EVAL["heldout_items"]]
    owner = {}
    for index, (_, item) in enumerate(items):
        answer, _ = _ask(fleet, key, item["q"])
        assert answer == f"{served} answer to: {item['q']}"
        owner[answer] = index
    # Per part: asked, paraphrases, paraphrase hits, negatives, wrong hits (any kind).
    counts = {part: dict.fromkeys(("asked", "paraphrases", "hits", "negatives", "wrong"), 0) for part in ("main", "held-out")}
    hit_s, miss_s = [], []
    queries = [(part, index, kind, text) for index, (part, item) in enumerate(items)
               for kind in ("paraphrases", "negatives") for text in item[kind]]  # fmt: skip
    queries += [("main", -1, "unrelated", text) for text in EVAL["unrelated"]]
    for part, index, kind, text in queries:
        answer, seconds = _ask(fleet, key, text)
        row = counts[part]
        row["asked"] += 1
        row["paraphrases"] += kind == "paraphrases"
        row["negatives"] += kind == "negatives"
        if answer in owner:
            hit_s.append(seconds)
            if kind == "paraphrases" and owner[answer] == index:
                row["hits"] += 1
            else:
                row["wrong"] += 1
        else:
            miss_s.append(seconds)
    for part, row in counts.items():
        print(f"\nsemantic cache, {part} set, threshold {DEFAULT_THRESHOLD}: paraphrases hit {row['hits']}/{row['paraphrases']} "
              f"({row['hits'] / row['paraphrases']:.0%}); wrong hits {row['wrong']}/{row['asked']} "
              f"({row['wrong'] / row['asked']:.1%}; {row['negatives']} of the questions are hard negatives)")  # fmt: skip
    print(f"median hit {np.median(hit_s) * 1000:.1f} ms, median miss {np.median(miss_s) * 1000:.1f} ms (40 ms model)")
    asked = sum(r["asked"] for r in counts.values())
    wrong = sum(r["wrong"] for r in counts.values())
    hits, paraphrases = sum(r["hits"] for r in counts.values()), sum(r["paraphrases"] for r in counts.values())
    assert wrong / asked <= 0.01, counts
    assert hits / paraphrases >= 0.25, counts
    assert np.median(hit_s) < np.median(miss_s) / 2, "a hit costs less than half a miss on this 40 ms model"
