"""The gateway's exact response cache (Redis), opt-in per model.

Keys (contract.KEY_CACHE) are scoped by tenant, model and the version that answered,
plus the sha256 of the request's bytes without its id and version (wire.content_of,
the same bytes the native front hashes): never shared across tenants, and a new
version never sees an old version's answers. Whether a tenant's data may be cached
at all, and in this zone, is the residency policy's decision (operation `cache`),
taken in the snapshot. Redis trouble is a miss, never a failed request.
"""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as redis
from django.conf import settings
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway import contract
from appliance.gateway.wire import content_of

log = logging.getLogger(__name__)


def cache_key(instance: str, tenant_id: str, model: str, version: str, raw: bytes) -> str:
    """contract.KEY_CACHE for a request (ValueError if it is not well-formed protobuf)."""
    digest = hashlib.sha256(content_of(raw)).hexdigest()
    return contract.KEY_CACHE.format(instance=instance, tenant=tenant_id, model=model, version=version, digest=digest)


class ResponseCache:
    def __init__(self) -> None:
        self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ttl = settings.CACHE_TTL_S

    def key(self, tenant_id: str, model: str, version: str, raw: bytes) -> str:
        return cache_key(settings.INSTANCE, tenant_id, model, version, raw)

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
