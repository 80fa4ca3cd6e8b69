"""The gateway's exact response cache (Redis), opt-in per model.

Keys are scoped by tenant, model and the version that answered, plus the sha256
of the request's inputs (the request with its id and version cleared, serialised
deterministically): never shared across tenants, and a new version never sees an
old version's answers. Whether a tenant's data may be cached at all, and in this
zone, is the residency policy's decision (operation `cache`), taken in the
snapshot. Redis trouble is a miss, never a failed request.
"""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as redis
from django.conf import settings
from tritonclient.grpc import service_pb2 as pb

log = logging.getLogger(__name__)


class ResponseCache:
    def __init__(self) -> None:
        self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ttl = settings.CACHE_TTL_S
        self.prefix = f"{settings.INSTANCE}:cache"

    def key(self, tenant_id: str, model: str, version: str, request: pb.ModelInferRequest) -> str:
        inputs = pb.ModelInferRequest()
        inputs.CopyFrom(request)
        inputs.id = ""
        inputs.model_version = ""
        digest = hashlib.sha256(inputs.SerializeToString(deterministic=True)).hexdigest()
        return f"{self.prefix}:{tenant_id}:{model}:{version}:{digest}"

    async def get(self, key: str, request_id: str) -> bytes | None:
        try:
            cached = await self._redis.get(key)
        except redis.RedisError as exc:
            log.warning("response cache unavailable (%s); serving from Triton", type(exc).__name__)
            return None
        if cached is None:
            return None
        response = pb.ModelInferResponse.FromString(cached)
        response.id = request_id  # the answer is the cached one; the id is this request's
        return response.SerializeToString()

    async def put(self, key: str, response: bytes) -> None:
        try:
            await self._redis.set(key, response, ex=self.ttl)
        except redis.RedisError as exc:
            log.warning("response cache unavailable (%s); not stored", type(exc).__name__)

    async def close(self) -> None:
        await self._redis.aclose()
