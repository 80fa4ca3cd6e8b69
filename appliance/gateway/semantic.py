"""The gateway's semantic cache, opt-in per model whose input is one text.

A request's text is embedded by the embedder model (all-MiniLM-L6-v2, served on
our own Tritons like any model: `APPLIANCE_SEMANTIC_EMBEDDER`), and compared with
the texts already answered in the same scope — tenant, model and the version that
answers — never across tenants, and a new version starts empty. A cached answer is
used only when

1. the cosine similarity reaches the model's threshold, and
2. the two texts pass `compatible`: same numbers, same negation, and not a small
   edit of each other (when most content words are shared, the few that differ are
   what the question is about: "open" vs "closed", "savings to checking" vs
   "checking to savings"); sentence embeddings rank those pairs as close as true
   paraphrases (measured: tests/e2e/test_semantic_cache.py, bench/semantic_cache.py).

Entries live in Redis (one list per scope, bounded, expiring; each answer under
its own key with the model's TTL); every gateway process keeps the scope's vectors
in a numpy matrix and reads only the entries added since it last looked. Whether
a tenant's data may be cached here at all is the residency policy's `cache`
decision, as for the exact cache. Redis or embedder trouble is a miss, never a
failed request.
"""

from __future__ import annotations

import logging
import re
import struct
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as redis
from django.conf import settings
from rest_framework import serializers
from tritonclient.grpc import service_pb2 as pb

from appliance.core.api import validated_or_empty

log = logging.getLogger(__name__)

DIMENSIONS = 384
EMBED_INPUT, EMBED_OUTPUT = "TEXT", "EMBEDDING"
MAX_TEXT_BYTES = 4096  # longer prompts are not cached (the embedder reads 256 word pieces)
CANDIDATES = 3  # nearest entries checked against the guard

# Words that carry nothing a cached answer depends on. Relations (from, to, before,
# after, with, without, above, below, over, under, per, for) are deliberately absent.
STOP_WORDS = frozenset(
    "a an the of in on at by and or but if is are was were be been being do does did can could may might must shall "
    "should will would i me my we our you your he she it its they them their this that these those there here what which "
    "who whom whose when where why how am has have had get got so as into about than then too very just also any some all "
    "each please".split()
)
NEGATIONS = frozenset({"not", "no", "never", "without", "cannot", "none", "nobody", "nothing", "neither", "nor", "n't"})
_TOKENS = re.compile(r"[a-z0-9]+|n't")
_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th|s)?$")


# Chosen on the evaluation set (triton_models/minilm/semantic_eval.json): the lowest
# similarity at which no hard negative hit there, with margin; see docs/benchmarks.md.
DEFAULT_THRESHOLD = 0.85


class SemanticSettings(serializers.Serializer):
    """A model's semantic-cache settings (`Model.semantic_cache`; {} is off)."""

    threshold = serializers.FloatField(min_value=0.5, max_value=0.999, default=DEFAULT_THRESHOLD,
                                       help_text="cosine similarity at or above which a cached answer may be used")  # fmt: skip
    ttl_s = serializers.IntegerField(min_value=1, max_value=30 * 86400, default=3600)
    max_entries = serializers.IntegerField(min_value=1, max_value=100_000, default=10_000,
                                           help_text="per tenant and version; the oldest go first")  # fmt: skip


def normalise_semantic(value: object) -> dict[str, object]:
    return validated_or_empty(SemanticSettings, value)


def text_input_problem(signature: dict[str, object]) -> str:
    """Why a version's signature cannot front a semantic cache ('' when it can)."""
    inputs = signature.get("inputs") or []
    if not isinstance(inputs, list) or len(inputs) != 1 or inputs[0].get("datatype") != "BYTES":
        return "the semantic cache needs a model whose only input is text (one BYTES input)"
    return ""


# --- the guard against near-duplicates that mean something else --------------------------


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def text_facts(text: str) -> tuple[tuple[str, ...], int, tuple[str, ...]]:
    """(numbers, negation parity, content-word stems in order)."""
    words = _TOKENS.findall(text.lower().replace("n't", " n't ").replace("'s", " "))
    numbers = tuple(sorted(_ORDINAL.sub(r"\1", w) for w in words if any(c.isdigit() for c in w)))
    negated = sum(1 for w in words if w in NEGATIONS) % 2
    content = tuple(_stem(w) for w in words if w not in STOP_WORDS and w not in NEGATIONS and not any(c.isdigit() for c in w))
    return numbers, negated, content


def compatible(a: str, b: str) -> tuple[bool, str]:
    """May the answer to `b` serve `a`, as far as their words say? (True, "") or (False, why)."""
    numbers_a, negated_a, content_a = text_facts(a)
    numbers_b, negated_b, content_b = text_facts(b)
    if numbers_a != numbers_b:
        return False, "different numbers"
    if negated_a != negated_b:
        return False, "one is negated"
    ca, cb = Counter(content_a), Counter(content_b)
    shared = sum((ca & cb).values())
    differing = sum((ca - cb).values()) + sum((cb - ca).values())
    if differing == 0:
        return (content_a == content_b), ("" if content_a == content_b else "same words in another order")
    if shared >= differing:
        return False, "a small edit of the cached text"
    return True, ""


# --- the request's text, the embedder's request and answer --------------------------------


def request_text(request: pb.ModelInferRequest) -> str | None:
    """The one text of a batch-1 request with a single BYTES input, else None (not cacheable)."""
    if len(request.inputs) != 1 or request.inputs[0].datatype != "BYTES":
        return None
    shape = list(request.inputs[0].shape)
    if any(d != 1 for d in shape):
        return None
    if request.raw_input_contents:
        raw = request.raw_input_contents[0]
        if len(raw) < 4:
            return None
        size = struct.unpack("<I", raw[:4])[0]
        if size != len(raw) - 4:
            return None
        data = raw[4:]
    elif request.inputs[0].contents.bytes_contents:
        data = request.inputs[0].contents.bytes_contents[0]
    else:
        return None
    if len(data) > MAX_TEXT_BYTES:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def embed_request(text: str) -> bytes:
    data = text.encode("utf-8")
    request = pb.ModelInferRequest(model_name=settings.SEMANTIC_EMBEDDER)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = EMBED_INPUT, "BYTES"
    tensor.shape.extend([1, 1])
    request.outputs.add().name = EMBED_OUTPUT
    request.raw_input_contents.append(struct.pack("<I", len(data)) + data)
    return request.SerializeToString()


def embedding_of(raw_response: bytes) -> np.ndarray:
    response = pb.ModelInferResponse.FromString(raw_response)
    vector = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    if vector.shape != (DIMENSIONS,):
        raise ValueError(f"the embedder answered {vector.shape[0]} values, not {DIMENSIONS}")
    return vector


# --- the index --------------------------------------------------------------------------


@dataclass
class _Local:
    """One scope's entries as this process last read them."""

    first: bytes = b""
    ids: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIMENSIONS), np.float32))
    used: float = 0.0


@dataclass(frozen=True)
class Match:
    entry: bytes
    similarity: float
    text: str


def _pack(entry: bytes, vector: np.ndarray, text: str) -> bytes:
    return entry + vector.astype(np.float32).tobytes() + text.encode("utf-8")


def _unpack(raw: bytes) -> tuple[bytes, np.ndarray, str]:
    cut = 16 + 4 * DIMENSIONS
    return raw[:16], np.frombuffer(raw[16:cut], dtype=np.float32), raw[cut:].decode("utf-8")


class SemanticCache:
    def __init__(self) -> None:
        self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.prefix = f"{settings.INSTANCE}:sem"
        self._local: dict[str, _Local] = {}

    def scope(self, tenant_id: str, model: str, version: str) -> str:
        return f"{self.prefix}:{tenant_id}:{model}:{version}"

    async def _sync(self, scope: str) -> _Local:
        """Brings this process's copy of the scope up to date: one round trip (two if it was trimmed)."""
        local = self._local.get(scope) or _Local()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lindex(scope, 0)
            pipe.lrange(scope, len(local.ids), -1)
            first, new = await pipe.execute()
        if first is None:
            local = _Local()
        elif first[:16] != local.first:
            local = _Local()
            new = await self._redis.lrange(scope, 0, -1)
        if new:
            unpacked = [_unpack(raw) for raw in new]
            local.ids.extend(u[0] for u in unpacked)
            local.texts.extend(u[2] for u in unpacked)
            local.vectors = np.vstack([local.vectors, np.stack([u[1] for u in unpacked])])
            local.first = local.ids[0]
        local.used = time.monotonic()
        self._local[scope] = local
        if len(self._local) > settings.SEMANTIC_MAX_SCOPES:
            oldest = min(self._local, key=lambda s: self._local[s].used)
            self._local.pop(oldest, None)
        return local

    async def lookup(self, scope: str, vector: np.ndarray, text: str, threshold: float) -> tuple[bytes | None, Match | None]:
        """(the cached answer, the match) for the nearest compatible entry at or over the
        threshold; (None, None) when there is none or Redis fails."""
        try:
            local = await self._sync(scope)
            if not local.ids:
                return None, None
            similarities = local.vectors @ vector
            for index in np.argsort(-similarities)[:CANDIDATES]:
                similarity = float(similarities[index])
                if similarity < threshold:
                    break
                if compatible(text, local.texts[index])[0]:
                    answer = await self._redis.get(f"{self.prefix}:answer:{local.ids[index].hex()}")
                    if not isinstance(answer, bytes):
                        return None, None  # expired: a miss; the list expires with it
                    return answer, Match(local.ids[index], similarity, local.texts[index])
        except redis.RedisError as exc:
            log.warning("semantic cache unavailable (%s); serving from Triton", type(exc).__name__)
        return None, None

    async def put(self, scope: str, vector: np.ndarray, text: str, answer: bytes, ttl_s: int, max_entries: int) -> None:
        entry = uuid.uuid4().bytes
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.prefix}:answer:{entry.hex()}", answer, ex=ttl_s)
                pipe.rpush(scope, _pack(entry, vector, text))
                pipe.ltrim(scope, -max_entries, -1)
                pipe.expire(scope, ttl_s)
                await pipe.execute()
        except redis.RedisError as exc:
            log.warning("semantic cache unavailable (%s); not stored", type(exc).__name__)

    async def close(self) -> None:
        await self._redis.aclose()
