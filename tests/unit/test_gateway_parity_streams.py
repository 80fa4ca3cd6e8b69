"""The two planes serve generative streams alike (server.py model_stream_infer and its
native twin in native/call.cc, through tokens.py and native/tokens.cc).

The same scripts go to the native front's rules (var/build/gatewayd-replay) and to the
Python plane's modules (tests/gateway_twin.py): what a request asks to generate and why
one is refused, the caps that need no store, asking the engine for its token counts, the
counts each response carries and what a stream gives back, whether a response carries an
error, and the statistics a stream leaves in Redis and Prometheus.
"""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway import contract
from tests.gateway_twin import Twin, native
from tests.unit.test_gateway_parity import _both, _stored, clean_redis  # noqa: F401 (a fixture)


def _request(sampling: bytes | None, *, raw: bool, version: str = "", flags: tuple[str, ...] = ()) -> bytes:
    """A request as Triton's vLLM backend takes it: text, stream flag, sampling parameters."""
    request = pb.ModelInferRequest(model_name="llm", model_version=version)
    tensors: list[tuple[str, str, bytes, Any]] = [("text_input", "BYTES", b"Hello", None), ("stream", "BOOL", b"\x01", True)]
    if sampling is not None:
        tensors.append(("sampling_parameters", "BYTES", sampling, None))
    tensors += [(flag, "BOOL", b"\x00", False) for flag in flags]
    for name, datatype, value, flag in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[1])
        if raw:
            request.raw_input_contents.append(struct.pack("<I", len(value)) + value if datatype == "BYTES" else value)
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.append(value)
        else:
            tensor.contents.bool_contents.append(flag)
    return bytes(request.SerializeToString())


SAMPLINGS = [
    None, b"", b"{}", b'{"max_tokens": 5}', b'{"max_tokens": null, "temperature": 0}', b'{"max_tokens": 0}',
    b'{"max_tokens": -3}', b'{"max_tokens": true}', b'{"max_tokens": 5.0}', b'{"max_tokens": "5"}', b"[1]",
    b"not json", b'{"max_tokens": 4096}', b'"text"', b'{"max_tokens": 7', b"null",
]  # fmt: skip


@pytest.mark.parametrize("raw", [True, False], ids=["raw contents", "typed contents"])
def test_both_planes_read_what_a_request_asks_for(raw: bool) -> None:
    ops = [{"op": "tokens_asked", "raw": _request(s, raw=raw).hex(), "context": 2048} for s in SAMPLINGS]
    answers = _both(ops)
    asked = {s: a.get("asked", a.get("why")) for s, a in zip(SAMPLINGS, answers, strict=True)}
    assert asked[None] == asked[b"{}"] == contract.DEFAULT_MAX_TOKENS  # the engine's default
    assert asked[b'{"max_tokens": 5}'] == 5
    assert asked[b'{"max_tokens": null, "temperature": 0}'] == 2048  # the rest of the context
    assert asked[b"not json"] == "not JSON" and asked[b"[1]"] == "not an object"
    assert asked[b'{"max_tokens": true}'] == asked[b'{"max_tokens": 0}'] == "max_tokens is not a positive integer"


def test_both_planes_apply_the_caps_alike() -> None:
    ops = [{"op": "within_caps", "tenant": "acme", "tpm": tpm, "cap": cap, "asked": asked}
           for tpm in (0, 100, 4000) for cap in (0, 64, 256) for asked in (1, 64, 65, 100, 101, 300)]  # fmt: skip
    answers = _both(ops)
    refused = [a for a in answers if "status" in a]
    assert refused and all(a["status"] == "INVALID_ARGUMENT" for a in refused)
    assert {a["store"] for a in answers if "store" in a} == {True, False}


@pytest.mark.parametrize("raw", [True, False], ids=["raw contents", "typed contents"])
@pytest.mark.parametrize("flags", [(), ("return_num_output_tokens",)], ids=["no flag", "one flag already"])
def test_both_planes_ask_for_the_counts_alike(raw: bool, flags: tuple[str, ...]) -> None:
    request = _request(b'{"max_tokens": 5}', raw=raw, flags=flags)
    ops = [{"op": "ask_for_counts", "raw": request.hex()}]
    python, front = Twin().run(ops)[0], native(ops)[0]
    assert front["ok"]
    mine, theirs = (pb.ModelInferRequest.FromString(bytes.fromhex(a["raw"])) for a in (python, front))
    assert mine == theirs, f"Python {mine} != native {theirs}"
    names = [t.name for t in theirs.inputs]
    assert names.count("return_num_output_tokens") == names.count("return_num_input_tokens") == 1
    assert len(theirs.raw_input_contents) == (len(theirs.inputs) if raw else 0)


def _response(*, text: bytes | None = b"Hi", count: int | None = None, prompt: int | None = None, raw: bool = True,
              error: str = "") -> bytes:  # fmt: skip
    """A stream response as the appliance's vLLM runner writes it."""
    if error:
        return bytes(pb.ModelStreamInferResponse(error_message=error).SerializeToString())
    answer = pb.ModelInferResponse(model_name="llm", model_version="1")
    outputs: list[tuple[str, str, Any]] = []
    if text is not None:
        outputs.append(("text_output", "BYTES", text))
    if count is not None:
        outputs.append(("num_output_tokens", "UINT32", count))
    if prompt is not None:
        outputs.append(("num_input_tokens", "UINT32", prompt))
    for name, datatype, value in outputs:
        tensor = answer.outputs.add(name=name, datatype=datatype, shape=[1])
        if raw:
            answer.raw_output_contents.append(
                struct.pack("<I", len(value)) + value if datatype == "BYTES" else struct.pack("<I", value)
            )
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.append(value)
        else:
            tensor.contents.uint_contents.append(value)
    return bytes(pb.ModelStreamInferResponse(infer_response=answer).SerializeToString())


@pytest.mark.parametrize("raw", [True, False], ids=["raw contents", "typed contents"])
def test_both_planes_count_a_streams_tokens_alike(raw: bool) -> None:
    counted = [_response(count=3, raw=raw), _response(count=1, raw=raw), _response(count=2, prompt=9, raw=raw),
               _response(text=None, count=None), _response(error="engine failed"), _response(count=4, raw=raw)]  # fmt: skip
    uncounted = [_response(count=2, raw=raw), _response(text=b"x", count=None, raw=raw)]
    ops = [
        {"op": "budget", "reserved": 64, "minutes": {"100": 16, "101": 48}, "responses": [r.hex() for r in counted]},
        {"op": "budget", "reserved": 32, "minutes": {"100": 32}, "responses": [r.hex() for r in uncounted]},
        {"op": "budget", "reserved": 8, "minutes": {"100": 8}, "responses": [_response(count=8, raw=raw).hex()]},
    ]
    first, second, third = _both(ops)
    assert first["counted"] == [3, 1, 2, 0, 0, 4] and first["prompt"] == 9
    assert first["errors"] == [False, False, False, False, True, False]
    assert first["unused"] == [[101, 48], [100, 6]]  # 54 unused, the newest minute first
    assert second["uncounted"] and second["unused"] == []  # a response without a count: it stays charged
    assert third["unused"] == []  # all of it generated


def test_both_planes_write_the_same_stream_statistics(clean_redis: Any) -> None:  # noqa: F811
    client, (py_instance, native_instance) = clean_redis
    rng = random.Random(11)
    ops: list[dict[str, Any]] = []
    for _ in range(120):
        tenant, model, version = rng.choice(["acme", "globex"]), "llm", rng.choice(["1", "2"])
        answered = rng.random() < 0.8
        decode = rng.choice([0, rng.randint(1, 300)])
        ops.append({"op": "stream_ended", "tenant": tenant, "model": model, "version": version,
                    "first_response_s": rng.uniform(0.01, 2) if answered else None, "seconds": rng.uniform(0.05, 30),
                    "responses": rng.randint(1, 300) if answered else 0, "output_tokens": rng.randint(0, 300),
                    "input_tokens": rng.randint(0, 500), "decode_tokens": decode,
                    "decode_s": rng.uniform(0.01, 20) if decode else 0.0})  # fmt: skip
        ops.append({"op": "stream_answered", "tenant": tenant, "model": model, "ok": rng.random() < 0.9,
                    "seconds": rng.uniform(0.05, 30)})  # fmt: skip
        if answered:
            ops.append({"op": "version", "model": model, "version": version, "ok": True, "seconds": rng.uniform(0.01, 2)})
    at = 1_764_000_321.5
    kwargs = client.connection_pool.connection_kwargs
    redis_spec = f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    Twin().run([*ops, {"op": "flush", "instance": py_instance, "now": at}])
    assert native([*ops, {"op": "flush", "instance": native_instance, "now": at, "redis": redis_spec}])[-1]["flushed"]
    python, front = _stored(client, py_instance), _stored(client, native_instance)
    assert python and set(python) == set(front)
    fields = {name for values in python.values() for name in values}
    assert {"streams", "ttfr", "otok", "dtok", "dsec"} <= {f.rsplit("|", 1)[-1] for f in fields}
    for key, values in python.items():
        assert set(values) == set(front[key]), key
        for name, value in values.items():
            assert math.isclose(value, front[key][name], rel_tol=1e-9, abs_tol=1 if name == "ttl" else 1e-6), (key, name)


def test_both_planes_expose_the_same_stream_metrics() -> None:
    ttfts = [("llm", "1", 0.04), ("llm", "1", 0.3), ("llm", "2", 1.2)]
    gaps = [("llm", "1", 0.012), ("llm", "2", 0.03)]
    ops = [{"op": "ttft", "model": m, "version": v, "seconds": x} for m, v, x in ttfts]
    ops += [{"op": "inter_token", "model": m, "version": v, "seconds": x} for m, v, x in gaps]
    ops.append({"op": "stream_ended", "tenant": "acme", "model": "llm", "version": "1", "first_response_s": 0.04,
                "seconds": 2.0, "responses": 7, "output_tokens": 12, "input_tokens": 30, "decode_tokens": 11,
                "decode_s": 1.5})  # fmt: skip
    front = native([*ops, {"op": "exposition"}])[-1]["text"]
    registry = CollectorRegistry()
    stream = contract.STREAM_METRICS
    ttft = Histogram(*stream["ttft"], ["model", "version"], buckets=contract.LATENCY_BUCKETS_S, registry=registry)
    gap = Histogram(*stream["inter_token"], ["model", "version"], buckets=contract.LATENCY_BUCKETS_S, registry=registry)
    output = Counter(*stream["output_tokens"], ["tenant", "model", "version"], registry=registry)
    prompt = Counter(*stream["input_tokens"], ["tenant", "model", "version"], registry=registry)
    for model, version, seconds in ttfts:
        ttft.labels(model, version).observe(seconds)
    for model, version, seconds in gaps:
        gap.labels(model, version).observe(seconds)
    output.labels("acme", "llm", "1").inc(12)
    prompt.labels("acme", "llm", "1").inc(30)
    python = generate_latest(registry).decode()

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        names = {stream[name][0] for name in ("ttft", "inter_token", "output_tokens", "input_tokens")}
        return {
            (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "plane"))): sample.value
            for family in text_string_to_metric_families(text) if family.name in names
            for sample in family.samples if not sample.name.endswith("_created")
        }  # fmt: skip

    mine, theirs = samples(python), samples(front)
    assert mine and mine == theirs
    assert json.dumps(sorted(mine)) == json.dumps(sorted(theirs))


def test_a_request_whose_tensors_are_not_protobuf_is_not_taken_for_one() -> None:
    """Well-formed at its top level, not inside an input tensor: the Python plane's parse refuses
    it (not_a_message), so the front hands a first request over and refuses a later one rather
    than read counts or sampling parameters out of it."""
    good = _request(b'{"max_tokens": 5}', raw=True)
    broken = good + b"\x2a\x03\x0a\x09x"  # an input (field 5) whose name claims 9 bytes of 1
    with pytest.raises(Exception, match="Error parsing message|Truncated"):
        pb.ModelInferRequest.FromString(broken)
    answers = native([{"op": "ask_for_counts", "raw": raw.hex()} for raw in (good, broken)])
    assert [a["ok"] for a in answers] == [True, False]
