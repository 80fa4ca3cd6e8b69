"""Admission at the gateway: which replica a request goes to, whether it may go now,
waits, or is shed.

Each replica has an adaptive concurrency limit (`Limiter`, a latency gradient in
the manner of Netflix concurrency-limits' Gradient2 and Envoy's adaptive
concurrency filter): it grows while answers come within `tolerance` × the
replica's unloaded latency and shrinks when they come slower or the replica
reports overload; it does not grow on a node whose GPU memory headroom is below
GATEWAY_MIN_GPU_HEADROOM, so load is never added to a device close to
out-of-memory. (A first AIMD version cut the limit on single slow answers and
collapsed a batching backend to 2 in flight: 51 req/s where 400 were possible.)

A request of priority class c may use a replica while its in-flight count is
below limit × SHARE[c] (critical all of it, batch the least), so under pressure
batch traffic is the first to wait. Among replicas with room the request takes
the less loaded of two random ones (in-flight × baseline latency). With no room
it waits in the model's queue, ordered by class then arrival, until a slot frees
for it, its deadline (it is then dropped without ever being sent) or the queue
wait limit. A full queue sheds its lowest class first: a newcomer of a higher
class evicts the newest lowest-class waiter, otherwise the newcomer is refused at
once (RESOURCE_EXHAUSTED with a retry hint).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

RANK = {"critical": 0, "standard": 1, "batch": 2}
CLASSES = {rank: name for name, rank in RANK.items()}
SHARE = {0: 1.0, 1: 0.85, 2: 0.6}


class Shed(Exception):
    """No room now and no place in the queue (or the queue wait ran out)."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Expired(Exception):
    """The request's deadline passed while it waited: it was never sent."""


@dataclass
class Limiter:
    """A gradient limit in the manner of Netflix's Gradient2: the limit follows
    limit × min(1, (tolerance × baseline + slack) / smoothed latency) plus a queue
    allowance of √limit while the limit is in use, smoothed over many answers. It
    settles where answers take about `tolerance` times the replica's unloaded
    latency — room for a batching backend to queue one more batch — and falls
    quickly (halves its target) when the replica reports overload."""

    limit: float = 16.0
    minimum: float = 2.0
    maximum: float = 512.0
    tolerance: float = 2.0
    slack: float = 0.002  # seconds: sub-millisecond baselines are mostly the gateway's own noise
    smoothing: float = 0.05
    inflight: int = 0
    baseline: float | None = None  # seconds: a slowly rising minimum of observed latency
    latency: float | None = None  # seconds: smoothed recent latency
    _sampled: float | None = None  # when the baseline last moved (monotonic seconds)
    drift_s: float = 60.0  # time constant of the baseline's rise when the floor moved up
    down_until: float = 0.0  # monotonic seconds: passed over until then (the replica was not there)

    def capacity(self, rank: int) -> int:
        return max(1, int(self.limit * SHARE[rank]))

    def done(self, seconds: float, *, overloaded: bool, may_grow: bool, now: float) -> None:
        if self.baseline is None or seconds < self.baseline:
            self.baseline = seconds
        elif self._sampled is not None:
            # Rises toward what answers take with a time constant of drift_s, however many
            # answers come: a busy replica must not talk its own baseline up within seconds.
            self.baseline += (seconds - self.baseline) * min(1.0, max(0.0, now - self._sampled) / self.drift_s)
        self._sampled = now
        self.latency = seconds if self.latency is None else self.latency + (seconds - self.latency) * 0.1
        if overloaded:
            target = self.limit * 0.5
        else:
            gradient = max(0.5, min(1.0, (self.tolerance * self.baseline + self.slack) / self.latency))
            used = self.inflight + 1 >= self.limit * 0.5
            target = self.limit * gradient + (math.sqrt(self.limit) if used and may_grow else 0.0)
            if not may_grow:
                target = min(target, self.limit)
        self.limit = min(self.maximum, max(self.minimum, self.limit * (1 - self.smoothing) + target * self.smoothing))

    def cost(self) -> float:
        return (self.inflight + 1) * (self.baseline or 0.001)


@dataclass(order=True)
class _Waiter:
    rank: int
    seq: int
    routes: tuple[Any, ...] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    arrived: float = field(compare=False, default=0.0)


class Admission:
    def __init__(self, *, queue_max: int, queue_wait_s: float, initial_limit: float = 16.0, max_limit: float = 512.0) -> None:
        self.queue_max = queue_max
        self.queue_wait_s = queue_wait_s
        self.initial_limit = min(initial_limit, max_limit)
        self.max_limit = max_limit
        self.limiters: dict[tuple[str, str], Limiter] = {}
        self.queues: dict[str, list[_Waiter]] = {}
        self._seq = itertools.count()
        self.low_headroom: frozenset[str] = frozenset()  # nodes whose GPUs are nearly full

    def limiter(self, address: str, model: str) -> Limiter:
        """One per replica: a model on one Triton (models on the same Triton answer at
        their own speeds, so they never share a limit)."""
        limiter = self.limiters.get((address, model))
        if limiter is None:
            limiter = self.limiters[(address, model)] = Limiter(limit=self.initial_limit, maximum=self.max_limit)
        return limiter

    def least_loaded(self, model: str, candidates: list[Any]) -> Any:
        """The less loaded of two random candidates (in-flight × baseline latency), or None."""
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        a, b = random.sample(candidates, 2)
        return a if self.limiter(a.address, model).cost() <= self.limiter(b.address, model).cost() else b

    def eject(self, model: str, address: str, seconds: float) -> None:
        """The replica was not there to answer: pass over it for `seconds` (see _free)."""
        self.limiter(address, model).down_until = time.monotonic() + seconds

    def _free(self, model: str, routes: tuple[Any, ...], rank: int, exclude: str | None = None) -> Any:
        """The less loaded of two random replicas with room for this class, or None. Ejected
        replicas are passed over while any other one is up (never all of them: a request
        then tries its luck rather than wait for a slot nobody will free)."""
        now = time.monotonic()
        room: list[Any] = []
        ejected_room: list[Any] = []
        any_up = False
        for route in routes:
            if route.address == exclude:
                continue
            limiter = self.limiter(route.address, model)
            down = limiter.down_until > now
            any_up = any_up or not down
            if limiter.inflight < limiter.capacity(rank):
                (ejected_room if down else room).append(route)
        return self.least_loaded(model, room if any_up else ejected_room)

    def try_acquire(self, model: str, routes: tuple[Any, ...], rank: int, exclude: str | None = None) -> Any:
        route = self._free(model, routes, rank, exclude)
        if route is not None:
            self.limiter(route.address, model).inflight += 1
        return route

    async def acquire(self, model: str, routes: tuple[Any, ...], rank: int, deadline: float | None) -> tuple[Any, float]:
        """A replica slot: (route, seconds waited). Raises Shed or Expired."""
        route = self.try_acquire(model, routes, rank)
        if route is not None:
            return route, 0.0
        queue = self.queues.setdefault(model, [])
        if len(queue) >= self.queue_max:
            worst = max(queue)  # lowest class, newest arrival
            if worst.rank <= rank:
                raise Shed(f"model '{model}' is overloaded and its queue is full; retry later", self._hint(model, routes))
            queue.remove(worst)
            heapq.heapify(queue)
            worst.future.set_exception(
                Shed(f"model '{model}' is overloaded: a {CLASSES[worst.rank]} request was shed for higher-priority traffic",
                     self._hint(model, routes))  # fmt: skip
            )
        now = time.monotonic()
        waiter = _Waiter(rank, next(self._seq), routes, asyncio.get_running_loop().create_future(), now)
        heapq.heappush(queue, waiter)
        limit = now + self.queue_wait_s
        expires = deadline is not None and deadline < limit
        try:
            route = await asyncio.wait_for(asyncio.shield(waiter.future), timeout=max(0.0, min(limit, deadline or limit) - now))
            return route, time.monotonic() - now
        except TimeoutError:
            if waiter.future.done() and waiter.future.exception() is None:
                return waiter.future.result(), time.monotonic() - now  # granted as the timer fired
            self._forget(model, waiter)
            if expires:
                raise Expired(f"the request's deadline passed while it waited for model '{model}'; it was not sent") from None
            raise Shed(f"model '{model}' is overloaded: no replica slot within {self.queue_wait_s:g} s; retry later",
                       self._hint(model, routes)) from None  # fmt: skip
        except asyncio.CancelledError:
            # The caller went away: give back a slot granted meanwhile, or leave the queue.
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(model, waiter.future.result(), None)
            else:
                self._forget(model, waiter)
            raise

    def _forget(self, model: str, waiter: _Waiter) -> None:
        queue = self.queues.get(model, [])
        if waiter in queue:
            queue.remove(waiter)
            heapq.heapify(queue)
        if not waiter.future.done():
            waiter.future.cancel()

    def release(self, model: str, route: Any, seconds: float | None, *, overloaded: bool = False) -> None:
        """Frees the slot (seconds: the answer's latency, None if it proves nothing about load)
        and hands free capacity to the best waiters."""
        limiter = self.limiter(route.address, model)
        limiter.inflight -= 1
        if seconds is not None:
            limiter.done(seconds, overloaded=overloaded, may_grow=route.node not in self.low_headroom, now=time.monotonic())
        queue = self.queues.get(model)
        while queue:
            waiter = queue[0]
            if waiter.future.done():  # cancelled or shed
                heapq.heappop(queue)
                continue
            granted = self.try_acquire(model, waiter.routes, waiter.rank)
            if granted is None:
                # The best waiter cannot go; a lower class never overtakes it (no priority inversion).
                break
            heapq.heappop(queue)
            waiter.future.set_result(granted)

    def queued(self, model: str) -> int:
        return len(self.queues.get(model, ()))

    def _hint(self, model: str, routes: tuple[Any, ...]) -> int:
        """A retry hint: about one answer's time on the least loaded replica, at least 10 ms."""
        best = min((self.limiter(r.address, model).baseline or 0.01 for r in routes), default=0.01)
        return max(10, int(best * 1000 * 4))
