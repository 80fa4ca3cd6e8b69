"""Token-aware limits (gateway/tokens.py): what a stream request asks for, the counts its
responses carry, and the per-minute reservation in real Redis, atomic across two gateway
"processes" (two clients of the store)."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway import contract
from appliance.gateway.tokens import (
    Budget,
    TokenLimits,
    TokenRefusal,
    asking_for_counts,
    counts_in,
    max_tokens_of,
    tokens_in,
)


def _request(sampling: object | None, *, raw: bool = True) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="llm")
    items = [("text_input", b"hello")] + ([("sampling_parameters", json.dumps(sampling).encode())] if sampling is not None else [])
    for name, value in items:
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1])
        if raw:
            request.raw_input_contents.append(struct.pack("<I", len(value)) + value)
        else:
            tensor.contents.bytes_contents.append(value)
    return request


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "contents"])
def test_max_tokens_is_read_from_the_sampling_parameters(raw: bool) -> None:
    assert max_tokens_of(_request({"max_tokens": 300, "temperature": 0}, raw=raw), 2048) == 300
    assert max_tokens_of(_request({"temperature": 0}, raw=raw), 2048) == contract.DEFAULT_MAX_TOKENS
    assert max_tokens_of(_request(None, raw=raw), 2048) == contract.DEFAULT_MAX_TOKENS
    # null: the engine generates up to the rest of its context, so that much is reserved (not 16).
    assert max_tokens_of(_request({"max_tokens": None}, raw=raw), 2048) == 2048
    for bad in ({"max_tokens": "many"}, {"max_tokens": 0}, {"max_tokens": True}, [1, 2]):
        with pytest.raises(TokenRefusal) as info:
            max_tokens_of(_request(bad, raw=raw), 2048)
        assert info.value.name == "bad_sampling"


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "contents"])
def test_a_request_is_made_to_ask_for_its_token_counts_once(raw: bool) -> None:
    asked = pb.ModelInferRequest.FromString(asking_for_counts(_request({"max_tokens": 5}, raw=raw)))
    names = [t.name for t in asked.inputs]
    assert names == ["text_input", "sampling_parameters", "return_num_output_tokens", "return_num_input_tokens"]
    if raw:
        assert len(asked.raw_input_contents) == 4 and asked.raw_input_contents[2:] == [b"\x01", b"\x01"]
    else:
        assert [list(t.contents.bool_contents) for t in asked.inputs[2:]] == [[True], [True]]
    again = pb.ModelInferRequest.FromString(asking_for_counts(asked))
    assert [t.name for t in again.inputs] == names


def _response(count: int | None, *, text: bool = True, prompt: int | None = None) -> bytes:
    answer = pb.ModelInferResponse(model_name="llm")
    if text:
        answer.outputs.add(name="text_output", datatype="BYTES", shape=[1])
        answer.raw_output_contents.append(struct.pack("<I", 2) + b"hi")
    if count is not None:
        answer.outputs.add(name="num_output_tokens", datatype="UINT32", shape=[1])
        answer.raw_output_contents.append(np.array([count], dtype="<u4").tobytes())
    if prompt is not None:
        answer.outputs.add(name="num_input_tokens", datatype="UINT32", shape=[1])
        answer.raw_output_contents.append(np.array([prompt], dtype="<u4").tobytes())
    return pb.ModelStreamInferResponse(infer_response=answer).SerializeToString()


def test_the_counts_of_responses_are_read() -> None:
    assert tokens_in(_response(3)) == 3
    assert tokens_in(_response(None)) is None  # text without a count
    assert tokens_in(_response(None, text=False)) == 0  # the empty final response
    assert counts_in(_response(0, prompt=42)) == (0, 42)
    budget = Budget("t")
    assert [budget.count(raw) for raw in (_response(1), _response(4), _response(0, prompt=42))] == [1, 4, 0]
    assert budget.counted == 5 and budget.prompt == 42 and budget.ended and not budget.uncounted
    budget.count(_response(None))
    assert budget.uncounted and not budget.ended


def test_reservations_are_refused_past_the_limit_and_unused_tokens_come_back() -> None:
    async def scenario() -> None:
        limits = TokenLimits()
        tenant = str(uuid.uuid4())
        try:
            first = Budget(tenant)
            await limits.reserve(first, tenant="acme", tpm=100, cap=0, asked=60)
            second = Budget(tenant)
            with pytest.raises(TokenRefusal) as info:
                await limits.reserve(second, tenant="acme", tpm=100, cap=0, asked=50)
            assert info.value.name == "over_tokens" and 0 < info.value.retry_after_ms <= 60_000
            assert contract.refusal(info.value.name, **info.value.fields)[1].startswith(
                "tenant 'acme' is over its 100 output tokens a minute; retry in ")
            # The first stream generated 10 of its 60: 50 come back, and the second now fits.
            first.counted = 10
            await limits.settle(first)
            assert await limits.used(tenant) == 10
            await limits.reserve(second, tenant="acme", tpm=100, cap=0, asked=50)
            assert await limits.used(tenant) == 60
            # A stream whose responses carried no counts keeps its reservation charged.
            second.uncounted = True
            await limits.settle(second)
            assert await limits.used(tenant) == 60
            with pytest.raises(TokenRefusal) as capped:
                await limits.reserve(Budget(tenant), tenant="acme", tpm=0, cap=32, asked=64)
            assert capped.value.name == "max_tokens_over" and capped.value.fields["limit"] == 32
        finally:
            await limits.close()

    asyncio.run(_in_one_minute(scenario))


def test_a_minute_that_expired_is_not_made_again_when_a_long_stream_settles() -> None:
    async def scenario() -> None:
        limits = TokenLimits()
        tenant = str(uuid.uuid4())
        try:
            budget = Budget(tenant)
            await limits.reserve(budget, tenant="acme", tpm=100, cap=0, asked=60)
            (minute,) = budget.minutes
            key = limits._prefix(tenant) + str(minute)
            assert 0 < await limits._redis.ttl(key)
            await limits._redis.delete(key)  # the counter's lifetime ran out while the stream ran
            budget.counted = 5
            await limits.settle(budget)
            assert await limits._redis.exists(key) == 0, "no negative counter without an expiry"
        finally:
            await limits.close()

    asyncio.run(_in_one_minute(scenario))


def test_two_gateway_processes_share_one_budget_atomically() -> None:
    async def scenario() -> None:
        a, b = TokenLimits(), TokenLimits()
        tenant = str(uuid.uuid4())

        async def one(limits: TokenLimits) -> bool:
            try:
                await limits.reserve(Budget(tenant), tenant="acme", tpm=100, cap=0, asked=10)
                return True
            except TokenRefusal:
                return False

        try:
            outcomes = await asyncio.gather(*(one(a if i % 2 else b) for i in range(40)))
            assert sum(outcomes) == 10 and await a.used(tenant) == 100
        finally:
            await a.close()
            await b.close()

    asyncio.run(_in_one_minute(scenario))


async def _in_one_minute(scenario: object) -> None:
    """Runs the scenario inside one minute of Redis's clock (the budget's window)."""
    limits = TokenLimits()
    try:
        seconds, _ = await limits._redis.time()
        if 60 - seconds % 60 < 5:
            await asyncio.sleep(60 - seconds % 60 + 0.1)  # a window boundary would split the budget
    finally:
        await limits.close()
    await scenario()  # type: ignore[operator]
