"""Rate limits and daily quotas on the real Redis, shared by separate Quotas objects
(as separate gateway processes would share them)."""

from __future__ import annotations

import asyncio
import uuid

from appliance.gateway.quota import Quotas


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_token_bucket_is_shared_and_says_when_to_retry() -> None:
    tenant = uuid.uuid4().hex

    async def scenario() -> list:  # type: ignore[type-arg]
        a, b = Quotas(), Quotas()
        verdicts = [await (a if i % 2 else b).take(tenant, rate=2, burst=5, daily=0) for i in range(8)]
        await a.close()
        await b.close()
        return verdicts

    verdicts = _run(scenario())
    allowed = [v.allowed for v in verdicts]
    assert allowed[:5] == [True] * 5, "the burst is available at once, whichever process asks"
    assert allowed.count(True) in (5, 6), allowed  # at 2/s, at most one more token refills meanwhile
    refused = [v for v in verdicts if not v.allowed]
    assert all(v.reason == "rate" and 0 < v.retry_after_ms <= 500 for v in refused), refused


def test_daily_quota_counts_exactly_across_processes() -> None:
    tenant = uuid.uuid4().hex

    async def scenario() -> list:  # type: ignore[type-arg]
        processes = [Quotas() for _ in range(3)]
        verdicts = await asyncio.gather(*(processes[i % 3].take(tenant, rate=0, burst=0, daily=7) for i in range(20)))
        for q in processes:
            await q.close()
        return list(verdicts)

    verdicts = _run(scenario())
    assert sum(v.allowed for v in verdicts) == 7
    assert {v.reason for v in verdicts if not v.allowed} == {"quota"}
    assert all(0 < v.retry_after_ms <= 86_400_000 for v in verdicts if not v.allowed)


def test_no_limits_never_touch_redis() -> None:
    quotas = Quotas()
    quotas._script = None  # type: ignore[assignment]  # would raise if called
    assert _run(quotas.take("t", rate=0, burst=0, daily=0)).allowed
