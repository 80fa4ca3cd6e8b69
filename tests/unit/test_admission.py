"""Gateway admission: adaptive limits, priority classes, the bounded queue, deadlines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from appliance.gateway.admission import Admission, Expired, Limiter, Shed


@dataclass(frozen=True)
class R:
    address: str
    node: str = "n"
    version: str = "1"


A, B = R("a:1", "na"), R("b:1", "nb")


def test_limit_grows_while_used_and_fast_and_shrinks_when_slow() -> None:
    limiter = Limiter(limit=10)

    def answer(seconds: float, now: float, overloaded: bool = False) -> None:
        limiter.inflight = int(limiter.limit) - 1  # the limit is in use
        limiter.done(seconds, overloaded=overloaded, may_grow=True, now=now)

    for i in range(100):
        answer(0.020, i * 0.01)
    assert limiter.limit > 20, "answers at the baseline: the limit grows by its queue allowance"
    grown = limiter.limit
    for i in range(100):
        answer(0.040, 1 + i * 0.01)
    assert limiter.limit > grown, "twice the baseline is within tolerance (a batching backend queues one batch)"
    high = limiter.limit
    for i in range(100):
        answer(0.200, 2 + i * 0.01)
    assert limiter.limit < 0.5 * high, "ten times the baseline: the limit falls"
    low = limiter.limit
    answer(0.020, 3.0, overloaded=True)
    assert limiter.limit < low, "an overload answer cuts at once"
    held = Limiter(limit=10, inflight=8)
    for i in range(100):
        held.done(0.020, overloaded=False, may_grow=False, now=i)
    assert held.limit == 10, "no growth on a node short of GPU memory"
    idle = Limiter(limit=10, inflight=0)
    for i in range(100):
        idle.done(0.020, overloaded=False, may_grow=True, now=i)
    assert idle.limit == 10, "an idle replica's limit does not creep up"


def test_classes_get_shares_of_the_limit() -> None:
    admission = Admission(queue_max=0, queue_wait_s=1, initial_limit=10)
    taken = {rank: 0 for rank in (0, 1, 2)}
    for rank in (2, 1, 0):
        while admission.try_acquire("m", (A,), rank) is not None:
            taken[rank] += 1
    assert taken == {2: 6, 1: 2, 0: 2}, "batch fills 60%, standard up to 85%, critical the rest"


def test_least_loaded_of_two_is_chosen() -> None:
    admission = Admission(queue_max=0, queue_wait_s=1, initial_limit=100)
    for _ in range(5):
        assert admission.try_acquire("m", (A,), 0) is A
    for _ in range(20):
        chosen = admission.try_acquire("m", (A, B), 0)
        assert chosen is B
        admission.release("m", B, None)


def test_a_replica_that_was_not_there_is_passed_over_while_another_is_up() -> None:
    admission = Admission(queue_max=0, queue_wait_s=1, initial_limit=100)
    for _ in range(5):
        assert admission.try_acquire("m", (B,), 0) is B  # B busier: A would be chosen
    admission.eject("m", A.address, 60)
    assert {admission.try_acquire("m", (A, B), 0) for _ in range(10)} == {B}
    admission.eject("m", B.address, 60)
    assert admission.try_acquire("m", (A, B), 0) is A, "all ejected: still sent (nobody would free a slot)"
    admission.eject("m", A.address, 0)
    admission.eject("m", B.address, 0)
    assert admission.try_acquire("m", (A, B), 0) is A, "an ejection ends"


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_full_queue_sheds_the_lowest_class_first_and_grants_by_priority() -> None:
    async def scenario() -> list[str]:
        admission = Admission(queue_max=2, queue_wait_s=5, initial_limit=2)
        events: list[str] = []
        held = [await admission.acquire("m", (A,), 0, None), await admission.acquire("m", (A,), 0, None)]

        async def ask(name: str, rank: int) -> None:
            try:
                route, _ = await admission.acquire("m", (A,), rank, None)
                events.append(f"{name} got {route.address}")
                admission.release("m", route, 0.001)
            except Shed as shed:
                events.append(f"{name} shed ({shed.retry_after_ms} ms)")

        batch = asyncio.create_task(ask("batch", 2))
        standard = asyncio.create_task(ask("standard", 1))
        await asyncio.sleep(0)
        critical = asyncio.create_task(ask("critical", 0))  # queue full: the batch waiter goes
        await asyncio.sleep(0)
        late_batch = asyncio.create_task(ask("late batch", 2))  # full of higher classes: refused at once
        await asyncio.sleep(0)
        for route, _ in held:
            admission.release("m", route, 0.001)
        await asyncio.gather(batch, standard, critical, late_batch)
        return events

    events = _run(scenario())
    assert sorted(events[:2]) == ["batch shed (40 ms)", "late batch shed (40 ms)"], events
    assert events[2:] == ["critical got a:1", "standard got a:1"], "critical is served before standard"


def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_unsent() -> None:
    async def scenario() -> tuple[bool, int]:
        admission = Admission(queue_max=10, queue_wait_s=5, initial_limit=1)
        route, _ = await admission.acquire("m", (A,), 0, None)
        loop = asyncio.get_running_loop()
        with pytest.raises(Expired, match="never sent|was not sent"):
            await admission.acquire("m", (A,), 0, loop.time() + 0.05)
        admission.release("m", route, 0.001)
        return admission.queued("m") == 0, admission.limiter(A.address, "m").inflight

    empty, inflight = _run(scenario())
    assert empty and inflight == 0, "nothing waits, and no slot was taken for it"


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    async def scenario() -> int:
        admission = Admission(queue_max=10, queue_wait_s=5, initial_limit=1)
        route, _ = await admission.acquire("m", (A,), 0, None)
        waiter = asyncio.create_task(admission.acquire("m", (A,), 0, None))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        admission.release("m", route, 0.001)
        return admission.limiter(A.address, "m").inflight

    assert _run(scenario()) == 0


def test_models_on_one_triton_have_their_own_limits() -> None:
    admission = Admission(queue_max=0, queue_wait_s=1, initial_limit=4)
    fast, slow = admission.limiter(A.address, "fast"), admission.limiter(A.address, "slow")
    assert fast is not slow
    for i in range(200):
        fast.inflight = 3
        fast.done(0.001, overloaded=False, may_grow=True, now=i * 0.01)
    slow.inflight = 3
    slow.done(0.040, overloaded=False, may_grow=True, now=2.0)
    assert slow.baseline == 0.040, "a slow model is not judged against a fast neighbour's latency"


def test_baseline_rises_with_time_not_with_the_number_of_answers() -> None:
    limiter = Limiter(limit=10, inflight=9)
    limiter.done(0.020, overloaded=False, may_grow=True, now=0.0)
    for i in range(1000):  # 1000 slow answers within one second
        limiter.done(0.100, overloaded=False, may_grow=True, now=i / 1000)
    assert limiter.baseline < 0.022, "a busy second barely moves the floor"
    limiter.done(0.100, overloaded=False, may_grow=True, now=61.0)
    assert limiter.baseline > 0.09, "a minute later the floor has moved up"
