"""Token-aware limits for generative models: a tenant's output tokens a minute and the most
max_tokens a request may ask for, enforced on the streams of either plane (native/tokens.cc is
the native front's twin) atomically across every gateway process.

Each request of a stream reserves its max_tokens (or vLLM's default when it names none) in
the tenant's current minute with one Redis script (contract.TOKENS_SCRIPT): a reservation
that would pass the limit is refused with RESOURCE_EXHAUSTED and the time to the next minute.
While the stream runs the gateway adds up the token counts the responses carry
(`num_output_tokens`, which the gateway asks the model for when the client did not), and
when it ends gives back what was reserved and not generated. A response without a count
(a client that asked for named outputs only) leaves the reservation charged: the limit
errs towards the tenant's own budget, never past it. Like the rate limits, if Redis cannot
be reached the stream is served and it is logged.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field

import numpy as np
import redis
import redis.asyncio as aredis
from django.conf import settings
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway import contract

log = logging.getLogger(__name__)

SAMPLING = "sampling_parameters"
COUNT_FLAGS = ("return_num_output_tokens", "return_num_input_tokens")
COUNT = "num_output_tokens"
INPUT_COUNT = "num_input_tokens"


class TokenRefusal(Exception):
    def __init__(self, name: str, retry_after_ms: int | None = None, **fields: object) -> None:
        super().__init__(name)
        self.name, self.retry_after_ms, self.fields = name, retry_after_ms, fields


def _bytes_input(request: pb.ModelInferRequest, name: str) -> bytes | None:
    for index, tensor in enumerate(request.inputs):
        if tensor.name != name:
            continue
        if request.raw_input_contents:
            raw = request.raw_input_contents[index]
            if len(raw) < 4:
                return None
            (size,) = struct.unpack("<I", raw[:4])
            return raw[4 : 4 + size]
        return tensor.contents.bytes_contents[0] if tensor.contents.bytes_contents else None
    return None


def max_tokens_of(request: pb.ModelInferRequest, context: int) -> int:
    """What the request may generate: its sampling parameters' max_tokens; the engine's default
    (16) where it names none; and where it names null, what the engine then generates up to, the
    rest of its context (`context`, the model's max_model_len, bounds it)."""
    raw = _bytes_input(request, SAMPLING)
    if not raw:
        return contract.DEFAULT_MAX_TOKENS
    try:
        sampling = json.loads(raw)
    except ValueError as exc:
        raise TokenRefusal("bad_sampling", why="not JSON") from exc
    if not isinstance(sampling, dict):
        raise TokenRefusal("bad_sampling", why="not an object")
    value = sampling.get("max_tokens", contract.DEFAULT_MAX_TOKENS)
    if value is None:
        return context
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TokenRefusal("bad_sampling", why="max_tokens is not a positive integer")
    return value


def asking_for_counts(request: pb.ModelInferRequest) -> bytes:
    """The request with `return_num_output_tokens` and `return_num_input_tokens` set, so its
    responses carry their counts (the client gets them too: extra outputs it may ignore)."""
    present = {tensor.name for tensor in request.inputs}
    for name in COUNT_FLAGS:
        if name in present:
            continue
        flag = request.inputs.add(name=name, datatype="BOOL", shape=[1])
        if request.raw_input_contents:
            request.raw_input_contents.append(b"\x01")
        else:
            flag.contents.bool_contents.append(True)
    return bytes(request.SerializeToString())


def uint_output(answer: pb.ModelInferResponse, name: str) -> int | None:
    """The sum of a UINT32 output of a response (raw or typed contents), None when it is absent."""
    for index, tensor in enumerate(answer.outputs):
        if tensor.name != name:
            continue
        if answer.raw_output_contents:
            return int(np.frombuffer(answer.raw_output_contents[index], dtype="<u4").sum())
        return int(sum(tensor.contents.uint_contents))
    return None


def counts_in(raw: bytes) -> tuple[int | None, int | None]:
    """(output tokens, prompt tokens) one stream response carries. Output: None when it carries
    outputs but no count; 0 for one with no outputs (an error, or the empty final response)."""
    answer = pb.ModelStreamInferResponse.FromString(raw).infer_response
    if not answer.outputs:
        return 0, None
    return uint_output(answer, COUNT), uint_output(answer, INPUT_COUNT)


def tokens_in(raw: bytes) -> int | None:
    """The output tokens one stream response carries (counts_in's first)."""
    return counts_in(raw)[0]


@dataclass
class Budget:
    """What one stream reserved, and what its responses said they generated."""

    tenant_id: str
    reserved: int = 0
    counted: int = 0
    prompt: int = 0  # the prompt tokens the engine reported
    uncounted: bool = False  # a response without a count: the reservation stays charged
    minutes: dict[int, int] = field(default_factory=dict)  # minute -> tokens reserved in it
    ended: bool = False  # the last response counted closed its request (it carried the prompt's count)

    def count(self, raw: bytes) -> int:
        """Adds one response's counts; returns its output tokens (0 if it carried none)."""
        found, prompt = counts_in(raw)
        self.ended = prompt is not None
        if prompt is not None:
            self.prompt += prompt
        if found is None:
            self.uncounted = True
            return 0
        self.counted += found
        return found

    def unused(self) -> list[tuple[int, int]]:
        """What to give back, newest minute first: (minute, tokens); nothing while a response
        carried no count (the reservation stays charged)."""
        if not self.reserved or self.uncounted:
            return []
        left, out = max(0, self.reserved - self.counted), []
        for minute, reserved in sorted(self.minutes.items(), reverse=True):
            back = min(left, reserved)
            if back <= 0:
                break
            out.append((minute, back))
            left -= back
        return out


def within_caps(*, tenant: str, tpm: int, cap: int, asked: int) -> bool:
    """A request's max_tokens against the key's limits that need no store: raises TokenRefusal
    when it asks for more than the key's cap or minute limit; True when the minute's counter
    must be asked (a minute limit)."""
    if cap and asked > cap:
        raise TokenRefusal("max_tokens_over", asked=asked, tenant=tenant, limit=cap)
    if tpm > 0 and asked > tpm:
        raise TokenRefusal("max_tokens_over", asked=asked, tenant=tenant, limit=tpm)
    return tpm > 0


class TokenLimits:
    def __init__(self) -> None:
        self._redis = aredis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(contract.TOKENS_SCRIPT)
        self._give_back = self._redis.register_script(contract.GIVE_BACK_SCRIPT)
        self.instance = settings.INSTANCE

    def _prefix(self, tenant_id: str) -> str:
        return contract.KEY_TOKENS_MINUTE.format(instance=self.instance, tenant=tenant_id)

    async def reserve(self, budget: Budget, *, tenant: str, tpm: int, cap: int, asked: int) -> None:
        """Reserves `asked` tokens for one request, or raises TokenRefusal."""
        if not within_caps(tenant=tenant, tpm=tpm, cap=cap, asked=asked):
            return
        try:
            allowed, retry_ms, minute = await self._script(keys=[self._prefix(budget.tenant_id)], args=[tpm, asked])
        except redis.RedisError as exc:
            log.warning("token store unavailable (%s); serving without token limits", type(exc).__name__)
            return
        if not allowed:
            raise TokenRefusal("over_tokens", int(retry_ms), tenant=tenant, tpm=tpm, retry_ms=int(retry_ms))
        budget.reserved += asked
        budget.minutes[int(minute)] = budget.minutes.get(int(minute), 0) + asked

    async def settle(self, budget: Budget) -> None:
        """Gives back what the stream reserved and did not generate (all of it, if it counted)."""
        unused = budget.unused()
        try:
            for minute, back in unused:
                await self._give_back(keys=[self._prefix(budget.tenant_id) + str(minute)], args=[back])
        except redis.RedisError as exc:
            log.warning("token store unavailable (%s); %d unused tokens not given back", type(exc).__name__,
                        sum(back for _, back in unused))  # fmt: skip

    async def used(self, tenant_id: str) -> int:
        """Tokens charged in the current minute (for the console and tests)."""
        now = await self._redis.time()
        value = await self._redis.get(self._prefix(tenant_id) + str(int(now[0]) // 60))
        return int(value or 0)

    async def close(self) -> None:
        await self._redis.aclose()
