"""Per-tenant rate limits and daily quotas, enforced atomically across every gateway
process by one Redis script per request.

The rate limit is a token bucket (rate_limit_rps tokens a second, rate_burst at
most) kept in a Redis hash and refilled by Redis's own clock, so processes and
machines that disagree on time still share one bucket. The daily quota is a
counter per UTC day. A refused request learns how long to wait. If Redis cannot
be reached the gateway serves (fail open) and logs it: limits protect capacity,
and an outage of Redis must not become an outage of inference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
import redis.asyncio as aredis
from django.conf import settings

log = logging.getLogger(__name__)

# KEYS[1] bucket hash, KEYS[2] day counter prefix; ARGV rate, burst, daily quota.
# Returns {allowed (1/0), retry_after_ms, reason (0 ok, 1 rate, 2 quota)}.
SCRIPT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if quota > 0 then
  local day = KEYS[2] .. math.floor(t / 86400)
  local used = tonumber(redis.call('GET', day) or '0')
  if used >= quota then
    return {0, math.floor((86400 - (t % 86400)) * 1000), 2}
  end
end
if rate > 0 then
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or t
  tokens = math.min(burst, tokens + math.max(0, t - ts) * rate)
  if tokens < 1 then
    redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', t)
    redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
    return {0, math.ceil((1 - tokens) / rate * 1000), 1}
  end
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ts', t)
  redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
end
if quota > 0 then
  local day = KEYS[2] .. math.floor(t / 86400)
  redis.call('INCR', day)
  redis.call('EXPIRE', day, 2 * 86400)
end
return {1, 0, 0}
"""


def prefix() -> str:
    """Where the buckets and day counters live (the native front uses the same keys)."""
    return f"{settings.INSTANCE}:quota"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_ms: int = 0
    reason: str = ""  # "rate" or "quota"


class Quotas:
    def __init__(self) -> None:
        self._redis = aredis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(SCRIPT)
        self.prefix = prefix()

    async def take(self, tenant_id: str, *, rate: int, burst: int, daily: int) -> Verdict:
        """One request's worth of the tenant's allowance."""
        if rate <= 0 and daily <= 0:
            return Verdict(True)
        keys = [f"{self.prefix}:bucket:{tenant_id}", f"{self.prefix}:day:{tenant_id}:"]
        try:
            allowed, retry_ms, reason = await self._script(keys=keys, args=[rate, burst or rate, daily])
        except redis.RedisError as exc:
            log.warning("quota store unavailable (%s); serving without limits", type(exc).__name__)
            return Verdict(True)
        return Verdict(bool(allowed), int(retry_ms), {1: "rate", 2: "quota"}.get(int(reason), ""))

    async def close(self) -> None:
        await self._redis.aclose()
