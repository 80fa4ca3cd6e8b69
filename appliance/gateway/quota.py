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

from appliance.gateway import contract

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_ms: int = 0
    reason: str = ""  # "rate" or "quota"


class Quotas:
    def __init__(self) -> None:
        self._redis = aredis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(contract.QUOTA_SCRIPT)  # the script both planes run
        self.instance = settings.INSTANCE

    async def take(self, tenant_id: str, *, rate: int, burst: int, daily: int) -> Verdict:
        """One request's worth of the tenant's allowance."""
        if rate <= 0 and daily <= 0:
            return Verdict(True)
        keys = [contract.KEY_QUOTA_BUCKET.format(instance=self.instance, tenant=tenant_id),
                contract.KEY_QUOTA_DAY.format(instance=self.instance, tenant=tenant_id)]  # fmt: skip
        try:
            allowed, retry_ms, reason = await self._script(keys=keys, args=[rate, burst or rate, daily])
        except redis.RedisError as exc:
            log.warning("quota store unavailable (%s); serving without limits", type(exc).__name__)
            return Verdict(True)
        return Verdict(bool(allowed), int(retry_ms), contract.QUOTA_REASONS[int(reason)] if 0 <= int(reason) < 3 else "")

    async def close(self) -> None:
        await self._redis.aclose()


def refusal(verdict: Verdict, *, tenant: str, rate: int, daily: int) -> tuple[str, str]:
    """(status, text) for a tenant over its rate limit or daily quota (native/stores.cc quota_refusal)."""
    if verdict.reason == "quota":
        return contract.refusal("over_quota", tenant=tenant, daily=daily)
    return contract.refusal("over_rate", tenant=tenant, rate=rate, retry_ms=verdict.retry_after_ms)
