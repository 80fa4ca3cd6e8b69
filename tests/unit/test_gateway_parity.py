"""The two planes of the gateway decide, count and answer alike.

Every rule both must agree on lives in appliance/gateway/contract.py; these tests show
that the code of each plane follows it the same way. The same scripts go to the native
front's rules (var/build/gatewayd-replay, built from the same units as gatewayd) and to
the Python plane's modules (tests/gateway_twin.py), and the answers must be equal:
admission decisions and every limiter's state after each step, refusal texts, cache
keys, the routes a key may use, the snapshot document as the front reads it, the Redis
statistics the rollout gates read, and the Prometheus exposition.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway import contract
from appliance.gateway.snapshot import KeyEntry, Route, Snapshot, export_document
from tests.gateway_twin import Twin, native, permitted

A = {"node": "node-a", "address": "127.0.0.1:9001"}
B = {"node": "node-b", "address": "127.0.0.1:9002"}
C = {"node": "node-c", "address": "127.0.0.1:9003"}


def _same(python: list[dict[str, Any]], front: list[dict[str, Any]], ops: list[dict[str, Any]]) -> None:
    assert len(python) == len(front) == len(ops)
    for step, (op, mine, theirs) in enumerate(zip(ops, python, front, strict=True)):
        assert mine == theirs, f"step {step} {op}: Python {mine} != native {theirs}"


def _both(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    python = Twin().run(ops)
    _same(python, native(ops), ops)
    return python


def test_an_overload_story_is_decided_alike() -> None:
    """Fill a replica, queue by class, evict, shed, grant in class order, learn latencies."""
    ops: list[dict[str, Any]] = [
        {"op": "configure", "queue_max": 2, "initial_limit": 2, "max_limit": 64},
        {"op": "clock", "now": 100.0},
        *({"op": "take", "model": "m", "routes": [A], "rank": 0} for _ in range(3)),  # a limit of 2: two slots
        {"op": "join", "id": "batch-1", "model": "m", "routes": [A], "rank": 2},
        {"op": "join", "id": "std-1", "model": "m", "routes": [A], "rank": 1},
        {"op": "join", "id": "crit-1", "model": "m", "routes": [A], "rank": 0},  # evicts batch-1
        {"op": "join", "id": "std-2", "model": "m", "routes": [A], "rank": 1},  # full of its betters: shed
        {"op": "clock", "now": 100.5},
        {"op": "release", "model": "m", "route": A, "seconds": 0.004},
        {"op": "release", "model": "m", "route": A, "seconds": 0.009, "overloaded": True},
        {"op": "release", "model": "m", "route": A, "seconds": None},
        {"op": "hint", "model": "m", "routes": [A]},
    ]
    answers = _both(ops)
    assert [answers[i]["route"] for i in (2, 3)] == [A["address"]] * 2 and answers[4]["route"] is None
    assert answers[7]["evicted"][0] == "batch-1"
    assert answers[8]["joined"] == "shed"
    assert answers[8]["refusal"][1] == "model 'm' is overloaded and its queue is full; retry later"
    assert answers[10]["granted"] == [["crit-1", A["address"]]], "the critical waiter goes first"


def test_ejected_replicas_are_passed_over_alike() -> None:
    ops: list[dict[str, Any]] = [
        {"op": "clock", "now": 5.0},
        {"op": "eject", "model": "m", "address": A["address"], "seconds": 1.0},
        {"op": "take", "model": "m", "routes": [A, B], "rank": 1},
        {"op": "take", "model": "m", "routes": [A], "rank": 1},  # the only one: tried anyway
        {"op": "take", "model": "m", "routes": [A, B], "rank": 1, "exclude": B["address"]},
        {"op": "clock", "now": 6.5},
        {"op": "take", "model": "m", "routes": [A, B], "rank": 1},
    ]
    answers = _both(ops)
    assert answers[2]["route"] == B["address"] and answers[3]["route"] == A["address"]


def test_no_queue_at_all_sheds_alike() -> None:
    """GATEWAY_QUEUE_MAX=0 (allowed by the settings): the Python plane used to crash here."""
    ops: list[dict[str, Any]] = [
        {"op": "configure", "queue_max": 0, "initial_limit": 1, "max_limit": 8},
        {"op": "take", "model": "m", "routes": [A], "rank": 0},
        {"op": "join", "id": "w", "model": "m", "routes": [A], "rank": 0},
    ]
    assert _both(ops)[2]["joined"] == "shed"


def _random_script(seed: int, steps: int = 400) -> list[dict[str, Any]]:
    """A valid random sequence of admission events; the Python twin runs along to know
    which slots are held and who waits (the native answers are compared afterwards)."""
    rng = random.Random(seed)
    twin = Twin()
    ops: list[dict[str, Any]] = []
    held: list[tuple[str, dict[str, Any]]] = []
    waiting: dict[str, str] = {}
    now = 1000.0
    names = iter(range(10**6))

    def run(op: dict[str, Any]) -> dict[str, Any]:
        ops.append(op)
        answer = twin.answer(op)
        for who, address in answer.get("granted", []):
            held.append((waiting.pop(who), next(r for r in (A, B, C) if r["address"] == address)))
        if "evicted" in answer:
            waiting.pop(answer["evicted"][0], None)
        return answer

    run({"op": "configure", "queue_max": rng.randint(0, 4), "initial_limit": rng.choice([1, 2, 3, 4]),
         "max_limit": rng.choice([4, 8, 64])})  # fmt: skip
    for _ in range(steps):
        model = rng.choice(["m", "n"])
        routes = rng.sample([A, B, C], rng.randint(1, 3))
        kind = rng.random()
        if kind < 0.1:
            now += rng.choice([0.0, 0.001, 0.25, 3.0, 90.0])
            run({"op": "clock", "now": now})
        elif kind < 0.35:
            op = {"op": "take", "model": model, "routes": routes, "rank": rng.randint(0, 2)}
            if rng.random() < 0.2:
                op["exclude"] = rng.choice(routes)["address"]
            answer = run(op)
            if answer["route"] is not None:
                held.append((model, next(r for r in routes if r["address"] == answer["route"])))
        elif kind < 0.55:
            name = f"w{next(names)}"
            if run({"op": "join", "id": name, "model": model, "routes": routes, "rank": rng.randint(0, 2)})["joined"] == "queued":
                waiting[name] = model
        elif kind < 0.6 and waiting:
            name = rng.choice(sorted(waiting))
            run({"op": "leave", "id": name})
            waiting.pop(name)
        elif kind < 0.9 and held:
            model, route = held.pop(rng.randrange(len(held)))
            seconds = rng.choice([None, 0.0004, 0.002, 0.01, 0.05, rng.uniform(0.001, 0.2)])
            run({"op": "release", "model": model, "route": route, "seconds": seconds,
                 "overloaded": rng.random() < 0.1, "low_headroom": ["node-c"] if rng.random() < 0.3 else []})  # fmt: skip
        elif kind < 0.95:
            run({"op": "eject", "model": model, "address": rng.choice(routes)["address"], "seconds": rng.choice([0.5, 1.0])})
        else:
            run({"op": "hint", "model": model, "routes": routes})
    return ops


@pytest.mark.parametrize("seed", range(12))
def test_random_admission_histories_are_decided_alike(seed: int) -> None:
    ops = _random_script(seed)
    python = Twin().run(ops)
    _same(python, native(ops), ops)
    kinds = {op["op"] for op in ops}
    assert {"take", "join", "release", "eject"} <= kinds, "the script exercises every admission event"


SAMPLE_FIELDS: dict[str, Any] = {
    "model": "digits", "version": "3", "reason": "rule 'eu-only' denies zone us", "tenant": "acme", "daily": 7,
    "rate": 5, "retry_ms": 120, "priority": "batch", "wait_s": 2.0, "what": "ModelInferRequest",
    "tpm": 4000, "asked": 512, "limit": 256, "why": "max_tokens 'many' is not a positive integer",
}  # fmt: skip


def test_every_refusal_reads_alike() -> None:
    ops = []
    for name, (_, template) in contract.REFUSALS.items():
        fields = {k: v for k, v in SAMPLE_FIELDS.items() if "{" + k + "}" in template}
        ops.append({"op": "refusal", "name": name, "fields": fields})
    for wait_s in (0.25, 1e-05, 1234567.0, 2.5):
        ops.append({"op": "refusal", "name": "queue_wait", "fields": {"model": "m", "wait_s": wait_s}})
    answers = _both(ops)
    assert all("{" not in a["text"] for a in answers), "every field of every refusal is filled in"
    assert answers[-1]["text"] == "model 'm' is overloaded: no replica slot within 2.5 s; retry later"


@pytest.mark.parametrize(("reason", "retry_ms"), [(1, 40), (2, 3_600_000)])
def test_quota_refusals_read_alike(reason: int, retry_ms: int) -> None:
    answers = _both([{"op": "quota_refusal", "tenant": "acme", "rate": 5, "daily": 7, "reason": reason, "retry_ms": retry_ms}])
    assert answers[0]["status"] == "RESOURCE_EXHAUSTED"


def _request(**fields: Any) -> bytes:
    request = pb.ModelInferRequest(model_name="digits", **fields)
    request.inputs.add(name="IMAGE", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\x00\x00\x80?" * 4)
    return request.SerializeToString()


def test_the_same_request_has_the_same_cache_key() -> None:
    plain = _request()
    variants = {
        "plain": plain,
        "with id and version": _request(id="req-1", model_version="3"),
        "id first on the wire": b"\x1a\x03abc" + plain,
        "version appended": plain + b"\x12\x013",
        "parameters": _request(parameters={"priority": pb.InferParameter(uint64_param=2)}),
        "unknown fixed64 field": plain + b"\x79" + b"\x01" * 8,
        "truncated": plain[:-3],
        "a group (not in the protocol)": plain + b"\x0b",
    }
    ops = [{"op": "cache_key", "instance": "inst", "tenant": "t-1", "model": "digits", "version": "3", "raw": raw.hex()}
           for raw in variants.values()]  # fmt: skip
    keys = dict(zip(variants, (a["key"] for a in _both(ops)), strict=True))
    assert keys["plain"] == keys["with id and version"] == keys["id first on the wire"] == keys["version appended"]
    assert keys["parameters"] != keys["plain"] and keys["unknown fixed64 field"] != keys["plain"]
    assert keys["truncated"] is None and keys["a group (not in the protocol)"] is None


def _snapshot() -> Snapshot:
    r = Route
    return Snapshot(
        keys={
            "h-any": KeyEntry("t-1", "acme", None, None, "critical", 5, 10, 100, tokens_per_minute=4000, max_tokens=256),
            "h-scoped": KeyEntry("t-1", "acme", 4102444800.0, frozenset({"digits"}), "batch"),
            "h-other": KeyEntry("t-2", "globex", None, None, "standard"),
        },
        grants={"t-1": frozenset({"digits", "embed"}), "t-2": frozenset({"digits"})},
        routes={
            "digits": (r("node-a", "a:1", "3"), r("node-a", "a:2", "4"), r("node-b", "b:1", "3"),
                       r("node-c", "c:1", "3", tenant="t-2")),
            "embed": (r("node-b", "b:1", "1"),),
        },  # fmt: skip
        permitted={"t-1": frozenset({"node-a", "node-c"}), "t-2": frozenset({"node-a", "node-b", "node-c"})},
        cached_models=frozenset({"digits"}),
        cache_tenants=frozenset({"t-1"}),
        semantic={"embed": {"threshold": 0.85}},
        weights={"digits": {"3": 90, "4": 10}},
        priority_levels={"digits": 3, "embed": 0},
        low_headroom=frozenset({"node-b"}),
        generative=frozenset({"embed"}),
        engine_slots={"embed": 32},
        engine_context={"embed": 2048},
    )


def _normalised(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the front's view is written: lists of names as sets (sorted)."""
    doc = json.loads(json.dumps(document))
    doc.pop("version")
    for entry in doc["keys"].values():
        entry["models"] = sorted(entry["models"]) if entry["models"] is not None else None
    return doc


def test_the_front_reads_the_snapshot_the_python_plane_writes(tmp_path: Path) -> None:
    snapshot = _snapshot()
    document = export_document(snapshot, frozenset({("b:1", "embed")}))
    assert document["generative"] == {"embed": {"slots": 32, "context": 2048}}
    assert document["engine_full"] == [["b:1", "embed"]]
    assert set(document) == set(contract.SNAPSHOT_FIELDS), "the document is the contract's, field for field"
    assert set(document["config"]) == set(contract.SNAPSHOT_FIELDS["config"])  # type: ignore[arg-type]
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(document))
    answer = native([{"op": "snapshot", "path": str(path)}])[0]
    assert answer["ok"], answer
    assert answer["view"] == _normalised(document)

    cases = [(key, model, version) for key in snapshot.keys for model in ("digits", "embed", "absent") for version in ("", "3", "4")]
    ops = [{"op": "permitted", "path": str(path), "key": k, "model": m, "version": v} for k, m, v in cases]
    for (key, model, version), front in zip(cases, native(ops), strict=True):
        assert front["routes"] == permitted(snapshot, snapshot.keys[key], model, version), (key, model, version)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{}", "no snapshot version"),
        (json.dumps({"version": contract.SNAPSHOT_VERSION + 1}), "snapshot version"),
        (json.dumps({"version": contract.SNAPSHOT_VERSION, "config": {}}), "key 'instance' not found"),
        ("{\"version\": 2, \"con", "parse error"),
    ],
)
def test_the_front_refuses_a_snapshot_it_cannot_read(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(text)
    answer = native([{"op": "snapshot", "path": str(path)}])[0]
    assert answer["ok"] is False and reason in answer["reason"]


@pytest.fixture
def clean_redis() -> Any:
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefixes = [f"parity-{uuid.uuid4().hex[:8]}-py", f"parity-{uuid.uuid4().hex[:8]}-native"]
    yield client, prefixes
    for prefix in prefixes:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def _stored(client: redis.Redis, instance: str) -> dict[str, dict[str, float]]:
    out = {}
    for key in client.scan_iter(f"{instance}:*"):
        name = key.decode().removeprefix(instance)
        if client.type(key) == b"hash":
            out[name] = {f.decode(): float(v) for f, v in client.hgetall(key).items()}
        else:
            out[name] = {"value": float(client.get(key))}
        out[name]["ttl"] = client.ttl(key)
    return out


def test_both_planes_write_the_same_statistics(clean_redis: Any) -> None:
    client, (py_instance, native_instance) = clean_redis
    rng = random.Random(7)
    ops: list[dict[str, Any]] = []
    for _ in range(300):
        seconds = rng.choice([0.0001, 0.0005, 0.001, 0.0042, 0.0075, 0.1, 0.3, rng.uniform(0, 12)])
        tenant, model = rng.choice(["acme", "globex"]), rng.choice(["digits", "embed"])
        ops.append({"op": "answered", "tenant": tenant, "model": model, "status": rng.choice(["OK", "OK", "UNAVAILABLE"]),
                    "seconds": seconds})  # fmt: skip
        ops.append({"op": "version", "model": model, "version": rng.choice(["3", "4"]), "ok": rng.random() < 0.9,
                    "seconds": seconds})  # fmt: skip
        if rng.random() < 0.3:
            ops.append({"op": "queued", "tenant": tenant, "model": model, "seconds": rng.uniform(0, 0.5)})
        if rng.random() < 0.3:
            ops.append({"op": "cache", "tenant": tenant, "model": model, "hit": rng.random() < 0.5})
    at = 1_764_000_123.375
    redis_spec = f"{client.connection_pool.connection_kwargs.get('host', '127.0.0.1')}:{client.connection_pool.connection_kwargs.get('port', 6379)}/{client.connection_pool.connection_kwargs.get('db', 0)}"
    Twin().run([*ops, {"op": "flush", "instance": py_instance, "now": at}])
    assert native([*ops, {"op": "flush", "instance": native_instance, "now": at, "redis": redis_spec}])[-1]["flushed"]
    python, front = _stored(client, py_instance), _stored(client, native_instance)
    assert python and set(python) == set(front)
    for key, fields in python.items():
        assert set(fields) == set(front[key]), key
        for name, value in fields.items():
            assert math.isclose(value, front[key][name], rel_tol=0, abs_tol=1 if name == "ttl" else 0), (key, name)


def test_both_planes_expose_the_same_metrics() -> None:
    """Names, help, types, histogram bounds (`le` as prometheus_client writes them) and counts."""
    events = [("acme", "digits", "OK", 0.003), ("acme", "digits", "UNAVAILABLE", 0.5), ("globex", "embed", "OK", 1.0)]
    ops = [{"op": "answered", "tenant": t, "model": m, "status": s, "seconds": x} for t, m, s, x in events]
    front = native([*ops, {"op": "exposition"}])[-1]["text"]
    registry = CollectorRegistry()
    requests = Counter(*contract.METRICS["requests"], ["tenant", "model", "status"], registry=registry)
    latency = Histogram(*contract.METRICS["latency"], ["model"], buckets=contract.LATENCY_BUCKETS_S, registry=registry)
    for tenant, model, status, seconds in events:
        requests.labels(tenant, model, status).inc()
        latency.labels(model).observe(seconds)
    python = generate_latest(registry).decode()

    def samples(text: str, families: set[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = {}
        for family in text_string_to_metric_families(text):
            if family.name in families:
                for sample in family.samples:
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "plane"))
                    if not sample.name.endswith("_created"):
                        found[(sample.name, labels)] = sample.value
        return found

    names = {contract.METRICS["requests"][0], contract.METRICS["latency"][0]}
    assert samples(python, names) == samples(front, names)
    helps = {f.name: (f.documentation, f.type) for f in text_string_to_metric_families(front)}
    assert helps[contract.METRICS["latency"][0]] == (contract.METRICS["latency"][1], "histogram")
