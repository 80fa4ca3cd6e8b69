"""Admission at the gateway: which replica a request goes to, whether it may go now,
waits, or is shed (native/admission.cc is the native front's twin; both take their
constants from contract.py, and the parity tests feed both the same events).

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

`Admission` is the synchronous core (take, join, leave, release, eject: what the
native front calls under its lock); `acquire` is the Python plane's wait around it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.gateway import contract

RANK = contract.RANK
CLASSES = dict(enumerate(contract.CLASS_NAMES))
SHARE = contract.SHARE


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
    maximum: float = 512.0
    inflight: int = 0
    baseline: float | None = None  # seconds: a slowly rising minimum of observed latency
    latency: float | None = None  # seconds: smoothed recent latency
    _sampled: float | None = None  # when the baseline last moved (monotonic seconds)
    down_until: float = 0.0  # monotonic seconds: passed over until then (the replica was not there)

    def capacity(self, rank: int) -> int:
        return max(1, int(self.limit * SHARE[rank]))

    def done(self, seconds: float, *, overloaded: bool, may_grow: bool, now: float) -> None:
        if self.baseline is None or seconds < self.baseline:
            self.baseline = seconds
        elif self._sampled is not None:
            # Rises toward what answers take with a time constant of LIMIT_DRIFT_S, however many
            # answers come: a busy replica must not talk its own baseline up within seconds.
            self.baseline += (seconds - self.baseline) * min(1.0, max(0.0, now - self._sampled) / contract.LIMIT_DRIFT_S)
        self._sampled = now
        self.latency = seconds if self.latency is None else self.latency + (seconds - self.latency) * contract.LIMIT_LATENCY_SMOOTHING
        if overloaded:
            target = self.limit * contract.LIMIT_OVERLOAD_FACTOR
        else:
            gradient = max(contract.LIMIT_GRADIENT_FLOOR,
                           min(1.0, (contract.LIMIT_TOLERANCE * self.baseline + contract.LIMIT_SLACK_S) / self.latency))  # fmt: skip
            used = self.inflight + 1 >= self.limit * contract.LIMIT_USED_FRACTION
            target = self.limit * gradient + (math.sqrt(self.limit) if used and may_grow else 0.0)
            if not may_grow:
                target = min(target, self.limit)
        smoothing = contract.LIMIT_SMOOTHING
        self.limit = min(self.maximum, max(contract.LIMIT_MIN, self.limit * (1 - smoothing) + target * smoothing))

    def cost(self) -> float:
        return (self.inflight + 1) * (self.baseline or contract.COST_DEFAULT_BASELINE_S)


@dataclass(order=True)
class Waiter:
    """A request in a model's queue: told `granted(route)` when a slot frees for it (False
    if it no longer wants one), `evicted(hint)` when shed for a higher class."""

    rank: int
    seq: int
    routes: tuple[Any, ...] = field(compare=False)
    granted: Callable[[Any], bool] = field(compare=False)
    evicted: Callable[[int], None] = field(compare=False)


def _two(n: int) -> tuple[int, int]:
    a, b = random.sample(range(n), 2)
    return a, b


class Admission:
    def __init__(
        self, *, queue_max: int, queue_wait_s: float, initial_limit: float = 16.0, max_limit: float = 512.0,
        clock: Callable[[], float] = time.monotonic, pick: Callable[[int], tuple[int, int]] = _two,
    ) -> None:  # fmt: skip
        self.queue_wait_s = queue_wait_s
        self.configure(queue_max=queue_max, initial_limit=initial_limit, max_limit=max_limit)
        self.limiters: dict[tuple[str, str], Limiter] = {}
        self.queues: dict[str, list[Waiter]] = {}
        self._seq = itertools.count(1)
        self._clock = clock
        self._pick = pick  # two distinct indices below n: "the less loaded of two random ones"
        self.low_headroom: frozenset[str] = frozenset()  # nodes whose GPUs are nearly full
        # Generative models: a replica's fixed stream slots (its engine's sequences × ENGINE_QUEUE_FACTOR).
        # A stream's length says nothing of the engine's load, so these limits do not adapt.
        self.slots: dict[str, int] = {}
        self.pressed: set[tuple[str, str]] = set()  # (replica address, model) whose engine last had no room

    def configure(self, *, queue_max: int, initial_limit: float, max_limit: float) -> None:
        self.queue_max = queue_max
        self.initial_limit = min(initial_limit, max_limit)
        self.max_limit = max_limit

    def limiter(self, address: str, model: str) -> Limiter:
        """One per replica: a model on one Triton (models on the same Triton answer at
        their own speeds, so they never share a limit)."""
        limiter = self.limiters.get((address, model))
        if limiter is None:
            fixed = self.slots.get(model)
            limiter = self.limiters[(address, model)] = (
                Limiter(limit=fixed, maximum=fixed) if fixed else Limiter(limit=self.initial_limit, maximum=self.max_limit)
            )
        return limiter

    def engine_pressure(self, address: str, model: str, *, full: bool) -> None:
        """A generative replica's engine has no room (KV cache nearly full, or a waiting queue as
        long as what it runs): no new stream while any is in flight there (a limit of one: a
        stale reading never locks a replica with nothing in flight out); its slots again once
        it reports room."""
        if model not in self.slots:
            return
        if full:
            self.pressed.add((address, model))
        else:
            self.pressed.discard((address, model))
        limiter = self.limiter(address, model)
        limiter.limit = 1.0 if full else float(self.slots[model])

    def set_slots(self, slots: dict[str, int]) -> None:
        """The generative models' stream slots per replica, applied to their limiters now (a
        replica whose engine last reported no room keeps its limit of one: a snapshot refresh
        is no news from the engine)."""
        self.slots = dict(slots)
        for (address, model), limiter in self.limiters.items():
            if model in self.slots:
                limiter.maximum = self.slots[model]
                limiter.limit = 1.0 if (address, model) in self.pressed else float(self.slots[model])

    def least_loaded(self, model: str, candidates: list[Any]) -> Any:
        """The less loaded of two random candidates (in-flight × baseline latency), or None."""
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        i, j = self._pick(len(candidates))
        a, b = candidates[i], candidates[j]
        return a if self.limiter(a.address, model).cost() <= self.limiter(b.address, model).cost() else b

    def eject(self, model: str, address: str, seconds: float) -> None:
        """The replica was not there to answer: pass over it for `seconds` (see take)."""
        self.limiter(address, model).down_until = self._clock() + seconds

    def take(self, model: str, routes: tuple[Any, ...], rank: int, exclude: str | None = None) -> Any:
        """A slot now on the less loaded of two random replicas with room for this class, or
        None. Ejected replicas are passed over while any other one is up (never all of them:
        a request then tries its luck rather than wait for a slot nobody will free)."""
        now = self._clock()
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
        route = self.least_loaded(model, room if any_up else ejected_room)
        if route is not None:
            self.limiter(route.address, model).inflight += 1
        return route

    try_acquire = take

    def join(self, model: str, routes: tuple[Any, ...], rank: int, *, granted: Callable[[Any], bool],
             evicted: Callable[[int], None]) -> Waiter:  # fmt: skip
        """A place in the model's queue. A full queue sheds its lowest class first: a newcomer
        of a higher class evicts the newest lowest-class waiter, otherwise it is shed itself."""
        queue = self.queues.setdefault(model, [])
        if len(queue) >= self.queue_max:
            worst = max(queue) if queue else None  # lowest class, newest arrival
            if worst is None or worst.rank <= rank:
                raise Shed(contract.refusal("queue_full", model=model)[1], self.hint(model, routes))
            queue.remove(worst)
            heapq.heapify(queue)
            worst.evicted(self.hint(model, routes))
        waiter = Waiter(rank, next(self._seq), routes, granted, evicted)
        heapq.heappush(queue, waiter)
        return waiter

    def leave(self, model: str, waiter: Waiter) -> bool:
        """Out of the queue (deadline, queue wait, cancellation). True if it was still waiting."""
        queue = self.queues.get(model, [])
        if waiter not in queue:
            return False
        queue.remove(waiter)
        heapq.heapify(queue)
        return True

    def release(self, model: str, route: Any, seconds: float | None, *, overloaded: bool = False) -> None:
        """Frees the slot (seconds: the answer's latency, None if it proves nothing about load)
        and hands free capacity to the best waiters."""
        limiter = self.limiter(route.address, model)
        limiter.inflight -= 1
        if seconds is not None:
            limiter.done(seconds, overloaded=overloaded, may_grow=route.node not in self.low_headroom, now=self._clock())
        queue = self.queues.get(model)
        while queue:
            waiter = queue[0]
            granted = self.take(model, waiter.routes, waiter.rank)
            if granted is None:
                # The best waiter cannot go; a lower class never overtakes it (no priority inversion).
                break
            heapq.heappop(queue)
            if not waiter.granted(granted):
                self.limiter(granted.address, model).inflight -= 1  # nobody took the slot

    def queued(self, model: str) -> int:
        return len(self.queues.get(model, ()))

    def hint(self, model: str, routes: tuple[Any, ...]) -> int:
        """A retry hint: about HINT_FACTOR answers' time on the least loaded replica."""
        default = contract.HINT_DEFAULT_BASELINE_S
        best = min((self.limiter(r.address, model).baseline or default for r in routes), default=default)
        return max(contract.HINT_MIN_MS, int(best * 1000 * contract.HINT_FACTOR))

    # --- the Python plane's wait ---------------------------------------------------------------
    async def acquire(self, model: str, routes: tuple[Any, ...], rank: int, deadline: float | None) -> tuple[Any, float]:
        """A replica slot: (route, seconds waited). Raises Shed or Expired."""
        route = self.take(model, routes, rank)
        if route is not None:
            return route, 0.0
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def granted(route: Any) -> bool:
            if future.done():
                return False
            future.set_result(route)
            return True

        def evicted(hint: int) -> None:
            if not future.done():
                text = contract.refusal("evicted", model=model, priority=CLASSES[rank])[1]
                future.set_exception(Shed(text, hint))

        waiter = self.join(model, routes, rank, granted=granted, evicted=evicted)
        now = time.monotonic()
        limit = now + self.queue_wait_s
        expires = deadline is not None and deadline < limit
        try:
            route = await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, min(limit, deadline or limit) - now))
            return route, time.monotonic() - now
        except TimeoutError:
            if future.done() and future.exception() is None:
                return future.result(), time.monotonic() - now  # granted as the timer fired
            self._forget(model, waiter, future)
            if expires:
                raise Expired(contract.refusal("expired_in_queue", model=model)[1]) from None
            raise Shed(contract.refusal("queue_wait", model=model, wait_s=float(self.queue_wait_s))[1],
                       self.hint(model, routes)) from None  # fmt: skip
        except asyncio.CancelledError:
            # The caller went away: give back a slot granted meanwhile, or leave the queue.
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(model, future.result(), None)
            else:
                self._forget(model, waiter, future)
            raise

    def _forget(self, model: str, waiter: Waiter, future: asyncio.Future[Any]) -> None:
        self.leave(model, waiter)
        if not future.done():
            future.cancel()
