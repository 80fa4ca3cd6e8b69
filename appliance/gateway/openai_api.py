"""The gateway's OpenAI-compatible HTTP API: `/v1/chat/completions` and `/v1/completions`
(streamed as server-sent events, or whole), `/v1/models` and `/v1/embeddings`, so the stock
`openai` client works unchanged against the appliance.

Nothing here decides who may do what: every call becomes the gRPC request a Triton client
would send — a stream of the vLLM backend's tensors for a generative model, a ModelInfer of
the embedder's TEXT for embeddings — and goes through the gateway's own handlers
(server.Handlers) with the caller's API key as its `authorization`, so keys, grants,
residency, priorities, rate limits, quotas, token limits and admission are the gRPC path's,
and so are the statistics and metrics. Refusals keep their text and map to the HTTP status an
OpenAI client expects (contract.HTTP_STATUS), in OpenAI's error shape. Chat messages are
rendered with the model's own chat template (read from its tokenizer at upload) in Jinja2's
sandbox, as transformers renders it. No request or response body is logged.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from aiohttp import web
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway import contract
from appliance.gateway.tokens import COUNT, INPUT_COUNT, uint_output

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
# OpenAI's sampling fields and the vLLM SamplingParams names they become.
_SAMPLING = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature",
             "top_p": "top_p", "stop": "stop", "seed": "seed", "presence_penalty": "presence_penalty",
             "frequency_penalty": "frequency_penalty",
             # vLLM's own extensions, as its OpenAI-compatible server takes them.
             "min_tokens": "min_tokens", "ignore_eos": "ignore_eos"}  # fmt: skip
_IGNORED = {"model", "messages", "prompt", "stream", "stream_options", "n", "user", "logit_bias", "response_format",
            "echo", "suffix", "best_of", "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls"}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after_ms: int | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after_ms = status, message, code, param, retry_after_ms

    @classmethod
    def of(cls, refusal: Any) -> ApiError:
        """The gateway's refusal (server.Refusal) as OpenAI's error: its HTTP status and retry hint."""
        retry = dict(refusal.trailers).get(contract.RETRY_AFTER_HEADER)
        return cls(contract.HTTP_STATUS.get(refusal.code.name, 500), refusal.message, code=refusal.code.name.lower(),
                   retry_after_ms=int(retry) if retry else None)  # fmt: skip

    def body(self) -> dict[str, Any]:
        kind = contract.HTTP_ERROR_TYPES.get(self.status, "api_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        body = self.body()
        headers = {}
        if self.retry_after_ms is not None:
            headers["Retry-After"] = str(max(1, -(-self.retry_after_ms // 1000)))
            headers[contract.RETRY_AFTER_HEADER] = str(self.retry_after_ms)
        return web.json_response(body, status=self.status, headers=headers)


class _Context:
    """What the gateway's handlers read of a gRPC call's context, for an HTTP call."""

    def __init__(self, authorization: str, timeout: float | None) -> None:
        self._metadata = (("authorization", authorization),) if authorization else ()
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()


def _bytes(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def _add(request: pb.ModelInferRequest, name: str, datatype: str, shape: list[int], raw: bytes) -> None:
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)


def _output(answer: pb.ModelInferResponse, name: str) -> bytes | None:
    for index, tensor in enumerate(answer.outputs):
        if tensor.name == name:
            return bytes(answer.raw_output_contents[index]) if answer.raw_output_contents else None
    return None


def _text(raw: bytes | None) -> str:
    if not raw:
        return ""
    out, at = [], 0
    while at + 4 <= len(raw):
        (size,) = struct.unpack("<I", raw[at : at + 4])
        out.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return b"".join(out).decode("utf-8", errors="replace")


class OpenAIApi:
    def __init__(self, gateway: Any, handlers: Any) -> None:
        self.gw, self.handlers = gateway, handlers
        self._templates = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                        extensions=["jinja2.ext.loopcontrols"])  # fmt: skip
        self._templates.filters["tojson"] = lambda value, **_: json.dumps(value)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        from appliance.gateway.server import Refusal

        try:
            return await handler(request)
        except ApiError as error:
            return error.response()
        except Refusal as refusal:
            return ApiError.of(refusal).response()
        except web.HTTPException:
            raise
        except Exception:
            log.exception("OpenAI API: %s %s failed", request.method, request.path)  # no body: never a payload
            return ApiError(500, "internal error").response()

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _auth(request: web.Request) -> str:
        return request.headers.get("Authorization", "")

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON lets "\ud800" through; no model can read it
            raise ApiError(400, f"the body holds text that is not valid Unicode ({exc.reason})") from None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required", param="model")
        return body

    @staticmethod
    def _sampling(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("n", 1) not in (1, None):
            raise ApiError(400, "only n=1 is served", param="n")
        unknown = sorted(set(body) - set(_SAMPLING) - _IGNORED)
        if unknown:
            raise ApiError(400, f"unsupported fields: {', '.join(unknown)}", param=unknown[0])
        sampling = {_SAMPLING[k]: v for k, v in body.items() if k in _SAMPLING and v is not None}
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            if name in sampling and (isinstance(sampling[name], bool) or not isinstance(sampling[name], int | float)):
                raise ApiError(400, f"'{name}' must be a number", param=name)
        return sampling

    async def _granted_to(self, authorization: str, model: str) -> bool:
        return self._grants(await self.gw.authenticate(_Context(authorization, None)), model)

    def _grants(self, key: Any, model: str) -> bool:
        return model in self.gw.snapshot.grants.get(key.tenant_id, ()) and (key.models is None or model in key.models)

    async def _granted(self, request: web.Request, model: str) -> bool:
        return await self._granted_to(self._auth(request), model)

    def _template(self, key: Any, model: str) -> tuple[str | None, str]:
        """The chat template the answering version was trained with, and the version to pin the
        request to ("": any). The template is a version's own: an upload not deployed yet changes
        nothing, and where a rollout's versions differ in templates, the version is drawn here by
        the traffic split (among those the tenant may use) and the request pinned to it."""
        templates: dict[str, str] = self.gw.snapshot.chat_templates.get(model, {})
        routes = self.gw.permitted_for(key, self.gw.snapshot.routes.get(model, ()))
        serving = sorted({r.version for r in routes}, key=int)
        if not serving:  # nothing routable now (scaled to zero, say): the newest version's
            return (templates[max(templates, key=int)] if templates else None), ""
        if len({templates.get(v) for v in serving}) == 1:
            return templates.get(serving[0]), ""
        chosen = self.gw.choose_version(model, routes)[0].version
        return templates.get(chosen), chosen

    def _render(self, model: str, messages: Any, template: str | None) -> str:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list", param="messages")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ApiError(400, "each message needs a role and content", param="messages")
            if isinstance(message.get("content"), list):  # content parts: the text ones
                texts = [p.get("text", "") for p in message["content"] if isinstance(p, dict)]
                if not all(isinstance(text, str) for text in texts):
                    raise ApiError(400, "a content part's text must be a string", param="messages")
                message["content"] = "".join(texts)
            if not isinstance(message.get("content"), str):
                raise ApiError(400, "each message needs a role and content", param="messages")
        if template is None:
            if model in self.gw.snapshot.generative:
                raise ApiError(400, f"model '{model}' has no chat template: use /v1/completions", param="model")
            return ""  # not a generative model: the stream path says what is wrong, as for any model
        try:
            return self._templates.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                                 bos_token="", eos_token="")  # fmt: skip
        except TemplateError as exc:
            raise ApiError(400, f"the model's chat template cannot render these messages: {exc}") from exc

    async def _generate(self, authorization: str, model: str, prompt: str, sampling: dict[str, Any],
                        version: str = "") -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        """The model's stream as the gRPC path serves it: {text, tokens, finish, prompt_tokens}."""
        if model not in self.gw.snapshot.generative:
            await self.gw.refresh_if_stale()
        if model not in self.gw.snapshot.generative and await self._granted_to(authorization, model):
            # (an ungranted name gets the stream path's NOT_FOUND, as for any model: nothing is told)
            raise ApiError(400, f"model '{model}' is not a generative model", param="model")
        request = pb.ModelInferRequest(model_name=model, model_version=version, id=uuid.uuid4().hex)
        _add(request, "text_input", "BYTES", [1], _bytes(prompt.encode()))
        _add(request, "stream", "BOOL", [1], b"\x01")
        _add(request, "sampling_parameters", "BYTES", [1], _bytes(json.dumps(sampling).encode()))
        for flag in ("exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens",
                     "return_finish_reason"):  # fmt: skip
            _add(request, flag, "BOOL", [1], b"\x01")

        async def one() -> AsyncIterator[bytes]:
            yield request.SerializeToString()

        async for raw in self.handlers.model_stream_infer(one(), _Context(authorization, None)):
            response = pb.ModelStreamInferResponse.FromString(raw)
            if response.error_message:
                # catalog/vllm_runner.py starts the client's own mistakes with "invalid request: ".
                raise ApiError(400 if "invalid request: " in response.error_message else 502, response.error_message)
            answer = response.infer_response
            yield {"text": _text(_output(answer, "text_output")), "tokens": uint_output(answer, COUNT) or 0,
                   "finish": _text(_output(answer, "finish_reason")) or None,
                   "prompt_tokens": uint_output(answer, INPUT_COUNT)}  # fmt: skip

    async def _serve(self, request: web.Request, body: dict[str, Any], prompt: str, *, chat: bool,
                     version: str = "", key: Any = None) -> web.StreamResponse:  # fmt: skip
        from appliance.gateway.server import Refusal

        model, sampling = body["model"], self._sampling(body)
        if chat and key is not None and "max_tokens" not in sampling:
            # OpenAI's chat has no length limit by default (the model's context): the most this
            # tenant may ask for, else null, which the engine reads as the rest of its context.
            sampling["max_tokens"] = key.max_tokens or None
        created, ident = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        kind = "chat.completion" if chat else "text_completion"
        stream = self._generate(self._auth(request), model, prompt, sampling, version)
        usage = {"prompt_tokens": 0, "completion_tokens": 0}

        def count(part: dict[str, Any]) -> None:
            usage["completion_tokens"] += part["tokens"]
            if part["prompt_tokens"] is not None:
                usage["prompt_tokens"] = part["prompt_tokens"]

        def totals() -> dict[str, int]:
            return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}

        if not body.get("stream"):
            text, finish = [], None
            async for part in stream:
                count(part)
                text.append(part["text"])
                finish = part["finish"] or finish
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish or "stop", "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": "".join(text)}
            else:
                choice["text"] = "".join(text)
            return web.json_response({"id": ident, "object": kind, "created": created, "model": model,
                                      "choices": [choice], "usage": totals()})  # fmt: skip
        # Streamed: the first part is awaited before the response starts, so a refusal is an HTTP error.
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise ApiError(502, f"model '{model}' answered nothing") from None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        async def send(part: dict[str, Any] | None, *, role: bool = False) -> None:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if part is not None and part["text"]:
                delta["content"] = part["text"]
            finish = part["finish"] if part is not None else None
            choice = ({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None} if chat else
                      {"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None})  # fmt: skip
            chunk = {"id": ident, "object": chunk_kind, "created": created, "model": model, "choices": [choice]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            count(first)
            finished = bool(first["finish"])
            await send(first, role=chat)
            async for part in stream:
                count(part)
                if finished:  # the engine's final response repeats the finish reason: OpenAI sends it once
                    part = {**part, "finish": None}
                finished = finished or bool(part["finish"])
                if part["text"] or part["finish"]:
                    await send(part)
            if (body.get("stream_options") or {}).get("include_usage"):
                tail = {"id": ident, "object": chunk_kind, "created": created, "model": model, "choices": [],
                        "usage": totals()}  # fmt: skip
                await response.write(f"data: {json.dumps(tail)}\n\n".encode())
        except (ApiError, Refusal) as failure:  # after the headers: OpenAI's in-stream error event
            # (a refusal mid-answer: the deadline passed, the replica went away)
            error = failure if isinstance(failure, ApiError) else ApiError.of(failure)
            await response.write(f"data: {json.dumps(error.body())}\n\n".encode())
        except Exception:  # a fault of ours after the headers: still an event, never a second response
            log.exception("OpenAI API: %s %s failed mid-stream", request.method, request.path)  # no body: never a payload
            await response.write(f"data: {json.dumps(ApiError(500, 'internal error').body())}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # --- endpoints -----------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        key = await self.gw.authenticate(_Context(self._auth(request), None))
        names = sorted(self.gw.snapshot.grants.get(key.tenant_id, ()))
        if key.models is not None:
            names = [n for n in names if n in key.models]
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": key.tenant_slug} for name in names]})  # fmt: skip

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        key = await self.gw.authenticate(_Context(self._auth(request), None))
        # An ungranted model is not rendered (nothing about it is told): the stream path refuses it.
        if not self._grants(key, body["model"]):
            return await self._serve(request, body, "", chat=True, key=key)
        template, version = self._template(key, body["model"])
        prompt = self._render(body["model"], body.get("messages"), template)
        return await self._serve(request, body, prompt, chat=True, version=version, key=key)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be one non-empty string", param="prompt")
        return await self._serve(request, body, prompt, chat=False)

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise ApiError(400, "'input' must be a non-empty string or list of strings", param="input")
        if len(texts) > contract.EMBEDDINGS_MAX_INPUTS:
            raise ApiError(400, f"at most {contract.EMBEDDINGS_MAX_INPUTS} inputs a request", param="input")
        model = body["model"]
        if model in self.gw.snapshot.generative and await self._granted(request, model):
            raise ApiError(400, f"model '{model}' is generative: it has no embeddings", param="model")
        infer = pb.ModelInferRequest(model_name=model, id=uuid.uuid4().hex)
        _add(infer, "TEXT", "BYTES", [len(texts), 1], b"".join(_bytes(t.encode()) for t in texts))
        raw = await self.handlers.model_infer(infer.SerializeToString(), _Context(self._auth(request), None))
        answer = pb.ModelInferResponse.FromString(raw)
        vectors = _output(answer, "EMBEDDING")
        if vectors is None:
            raise ApiError(400, f"model '{model}' is not an embedding model (no EMBEDDING output)", param="model")
        rows = np.frombuffer(vectors, dtype="<f4").reshape(len(texts), -1)
        return web.json_response({"object": "list", "model": model, "data": [
            {"object": "embedding", "index": i, "embedding": row.tolist()} for i, row in enumerate(rows)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0}})  # fmt: skip


async def start(gateway: Any, handlers: Any, bind: str, *, reuse_port: bool = False) -> web.AppRunner:
    """Serves the API on `bind` (host:port) in the running event loop."""
    host, _, port = bind.rpartition(":")
    # A client that goes away cancels its handler (and so its stream: the engine drops the
    # sequence), streamed or not; aiohttp would otherwise run the handler to its end for nobody.
    runner = web.AppRunner(OpenAIApi(gateway, handlers).app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port), reuse_port=reuse_port).start()
    log.info("OpenAI-compatible API at http://%s/v1/", bind)
    return runner
