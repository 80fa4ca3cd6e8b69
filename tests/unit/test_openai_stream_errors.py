"""The OpenAI-compatible API when the gateway refuses in the middle of a streamed answer (the
deadline passed, the replica went away): the headers and the first chunks have left, so the
client gets OpenAI's in-stream error event and the end of the stream, which the stock `openai`
client raises as an APIError, never a second set of HTTP headers on the same response.

The API is served for real (aiohttp, the stock client over HTTP); the gRPC stream handler
behind it is a stand-in that answers one real ModelStreamInferResponse and then raises the
gateway's own Refusal, because a real engine cannot be made to fail at that instant on cue.
The path with a real engine and Triton is tests/e2e/test_generative.py.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import openai
import pytest
from tritonclient.grpc import service_pb2 as pb

from appliance.core.process import free_port
from appliance.gateway import openai_api
from appliance.gateway.server import Refusal


class _Handlers:
    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            break
        response = pb.ModelStreamInferResponse()
        answer = response.infer_response
        answer.model_name = "llm"
        answer.outputs.add(name="text_output", datatype="BYTES", shape=[1])
        answer.raw_output_contents.append(struct.pack("<I", 3) + b"Par")
        answer.outputs.add(name="num_output_tokens", datatype="UINT32", shape=[1])
        answer.raw_output_contents.append(struct.pack("<I", 1))
        yield response.SerializeToString()
        raise Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, "the answer outran its deadline")


@pytest.fixture
def api() -> Iterator[str]:
    gateway = SimpleNamespace(snapshot=SimpleNamespace(generative=frozenset({"llm"}), chat_templates={}))
    loop = asyncio.new_event_loop()
    bind = f"127.0.0.1:{free_port()}"
    runner = loop.run_until_complete(openai_api.start(gateway, _Handlers(), bind))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{bind}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_a_refusal_mid_stream_is_an_in_stream_error_event_the_stock_client_raises(api: str) -> None:
    client = openai.OpenAI(base_url=api, api_key="ak_test", max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.completions.create(model="llm", prompt="The capital of France is", stream=True):
            received.append(chunk.choices[0].text)
    assert received == ["Par"], "the chunk sent before the refusal arrived"
    assert failed.value.message == "the answer outran its deadline"
    assert failed.value.body == {"message": "the answer outran its deadline", "type": "timeout", "param": None,
                                 "code": "deadline_exceeded"}  # fmt: skip


def test_the_raw_stream_ends_with_the_error_event_and_done(api: str) -> None:
    import urllib.request

    body = b'{"model": "llm", "prompt": "The capital of France is", "stream": true}'
    request = urllib.request.Request(f"{api}/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer ak_test"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-2].startswith('data: {"error": {"message": "the answer outran its deadline"')
    assert events[-1] == "data: [DONE]"
