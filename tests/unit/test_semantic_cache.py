"""The semantic cache's parts without Triton: the guard against near-duplicates that
mean something else, reading a request's text, and the index in real Redis (scopes
never shared, entries seen by every process, bounded, expiring)."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest
import redis
from django.conf import settings
from rest_framework.exceptions import ValidationError
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway.semantic import (
    DIMENSIONS,
    SemanticCache,
    compatible,
    embed_request,
    normalise_semantic,
    request_text,
    text_input_problem,
)


@pytest.mark.parametrize(
    ("a", "b", "ok", "why"),
    [
        ("How can I make the text bigger in the reporting tool?", "How do I increase the font size in the reporting tool?", True, ""),
        ("Is the branch closed on Sunday?", "Is the branch open on Sunday?", False, "a small edit of the cached text"),
        ("Transfer 1000 euros to savings", "Transfer 100 euros to savings", False, "different numbers"),
        ("Is the meeting on the 4th floor?", "Is the meeting on floor 4?", True, ""),
        ("Is the patient not allergic to penicillin?", "Is the patient allergic to penicillin?", False, "one is negated"),
        ("Summarise the complaint from Bob about Alice.", "Summarise the complaint from Alice about Bob.", False,
         "same words in another order"),
        ("Did the payment from Acme arrive?", "Did the payment to Acme arrive?", False, "a small edit of the cached text"),
        ("Is remote work allowed on Fridays?", "Is remote work allowed on Friday?", True, ""),
    ],
)  # fmt: skip
def test_the_guard_refuses_small_edits_numbers_negation_and_swaps(a: str, b: str, ok: bool, why: str) -> None:
    assert compatible(a, b) == (ok, why)


def _text_request(text: str, raw: bool = True, shape: tuple[int, ...] = (1, 1)) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slowtext")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "TEXT", "BYTES"
    tensor.shape.extend(shape)
    if raw:
        request.raw_input_contents.append(struct.pack("<I", len(text.encode())) + text.encode())
    else:
        tensor.contents.bytes_contents.append(text.encode())
    return request


def test_request_text_reads_one_text_or_declines() -> None:
    assert request_text(_text_request("héllo")) == "héllo"
    assert request_text(_text_request("typed", raw=False)) == "typed"
    assert request_text(_text_request("two", shape=(2, 1))) is None, "a batch of texts is not cached"
    numeric = pb.ModelInferRequest(model_name="digits")
    numeric.inputs.add(name="IMAGE", datatype="FP32", shape=[1, 64])
    assert request_text(numeric) is None
    broken = _text_request("x")
    broken.raw_input_contents[0] = b"\xff\xff\x00\x00abc"
    assert request_text(broken) is None, "a malformed length prefix is not guessed at"
    embedded = pb.ModelInferRequest.FromString(embed_request("hello"))
    assert (embedded.model_name, embedded.inputs[0].name, list(embedded.inputs[0].shape)) == ("minilm", "TEXT", [1, 1])


def test_settings_are_validated() -> None:
    assert normalise_semantic({}) == {}
    assert normalise_semantic({"threshold": 0.9}) == {"threshold": 0.9, "ttl_s": 3600, "max_entries": 10000}
    with pytest.raises(ValidationError):
        normalise_semantic({"threshold": 1.5})
    assert text_input_problem({"inputs": [{"name": "IMAGE", "datatype": "FP32", "dims": [64]}]})
    assert text_input_problem({"inputs": [{"name": "TEXT", "datatype": "BYTES", "dims": [1]}]}) == ""


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIMENSIONS).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_the_index_is_per_scope_shared_by_processes_and_bounded() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(f"{settings.INSTANCE}:sem:*"):
        client.delete(key)

    async def go() -> None:
        writer, reader = SemanticCache(), SemanticCache()  # two gateway processes
        acme = writer.scope("tenant-acme", "slowtext", "1")
        globex = writer.scope("tenant-globex", "slowtext", "1")
        question = "Is the Main Street branch open on Sunday?"
        await writer.put(acme, _unit(1), question, b"answer-1", ttl_s=60, max_entries=3)
        near = _unit(1) + 0.05 * _unit(2)
        near /= np.linalg.norm(near)
        answer, match = await reader.lookup(acme, near, "Does the Main Street branch open on Sundays?", 0.9)
        assert answer == b"answer-1" and match is not None and match.similarity > 0.9
        assert (await reader.lookup(globex, near, question, 0.5))[0] is None, "never across tenants"
        assert (await reader.lookup(reader.scope("tenant-acme", "slowtext", "2"), near, question, 0.5))[0] is None, (
            "a new version starts empty")
        assert (await reader.lookup(acme, near, "Is the Main Street branch closed on Sunday?", 0.5))[0] is None, (
            "a close vector with a small edit in words is refused")
        assert (await reader.lookup(acme, _unit(3), question, 0.9))[0] is None, "a far vector misses"
        for seed in (4, 5, 6):
            await writer.put(acme, _unit(seed), f"question {seed} about something else entirely", b"x", ttl_s=60, max_entries=3)
        assert client.llen(acme) == 3, "bounded: the oldest entry went"
        assert (await reader.lookup(acme, near, "Does the Main Street branch open on Sundays?", 0.9))[0] is None
        assert client.ttl(acme) > 0, "a scope expires when unused"
        await writer.close()
        await reader.close()

    asyncio.run(go())
