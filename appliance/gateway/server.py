"""The inference gateway: Triton's own gRPC service in front of the fleet.

A stock tritonclient talks to it unchanged, adding `authorization: Bearer <key>`.
Requests and responses stay raw bytes end to end; the gateway parses only the
request (to learn the model), appends the chosen version on the wire, forwards
the bytes to a replica's Triton and hands Triton's bytes straight back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from django.conf import settings
from django.db import close_old_connections
from tritonclient.grpc import service_pb2 as pb

from appliance.accounts.choices import PRIORITY_LEVEL
from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.gateway import contract, metrics
from appliance.gateway.admission import CLASSES, RANK, Admission, Expired, Shed
from appliance.gateway.cache import ResponseCache
from appliance.gateway.engines import EngineWatch
from appliance.gateway.quota import Quotas, refusal
from appliance.gateway.semantic import SemanticCache, embed_request, embedding_of, request_text
from appliance.gateway.snapshot import (
    KeyEntry,
    Route,
    Snapshot,
    build_snapshot,
    export_snapshot,
    for_tenant,
    permitted_for,
)
from appliance.gateway.stats import Recorder
from appliance.gateway.tokens import Budget, TokenLimits, TokenRefusal, asking_for_counts, max_tokens_of
from appliance.gateway.wire import SERVICE, stream_error, with_priority, with_version

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]
# What a replica answers when it is not there to answer (retried elsewhere, see _send), and
# when it is overloaded (the limiter backs off): the contract's, as the native front's.
REPLICA_MISSING = frozenset(grpc.StatusCode[name] for name in contract.REPLICA_MISSING)
OVERLOADED = frozenset(grpc.StatusCode[name] for name in contract.OVERLOADED)


class Refusal(Exception):
    """A request the gateway answers with a status itself (and, for RESOURCE_EXHAUSTED,
    a retry hint in the trailing metadata: `retry-after-ms`)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers: tuple[tuple[str, str], ...] = (
            ((contract.RETRY_AFTER_HEADER, str(retry_after_ms)),) if retry_after_ms is not None else ()
        )

    @classmethod
    def of(cls, name: str, retry_after_ms: int | None = None, **fields: Any) -> Refusal:
        """One of the contract's refusals (contract.REFUSALS), as the native front answers it."""
        status, text = contract.refusal(name, **fields)
        return cls(grpc.StatusCode[status], text, retry_after_ms)


class Gateway:
    def __init__(self, export_path: Path | None = None) -> None:
        self.snapshot = Snapshot()
        self.export_path = export_path  # where the native front reads the snapshot (run_gateway --native)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._refresh_lock = asyncio.Lock()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[tuple[str, str], Any] = {}
        self.admission = Admission(queue_max=settings.GATEWAY_QUEUE_MAX, queue_wait_s=settings.GATEWAY_QUEUE_WAIT_S,
                                   initial_limit=settings.GATEWAY_INITIAL_LIMIT, max_limit=settings.GATEWAY_MAX_LIMIT)  # fmt: skip
        self._denied: dict[tuple[str, str], float] = {}
        self.cache = ResponseCache()
        self.semantic = SemanticCache()
        self.quotas = Quotas()
        self.tokens = TokenLimits()
        self.engines = EngineWatch(self)
        self.stats = Recorder()
        self.tally = metrics.Tally()
        self._woken: dict[str, float] = {}

    # --- control-plane view ---------------------------------------------------------
    def _build(self, engine_full: frozenset[tuple[str, str]] = frozenset()) -> Snapshot:
        close_old_connections()
        snapshot = build_snapshot()
        if self.export_path is not None:
            export_snapshot(snapshot, self.export_path, engine_full)
        return snapshot

    async def refresh(self, *, unless_newer_than: float | None = None) -> None:
        async with self._refresh_lock:
            # Concurrent misses share one refresh: skip if one began after we asked.
            if unless_newer_than is not None and self.snapshot.built_at >= unless_newer_than:
                return
            loop = asyncio.get_running_loop()
            # The engines' pressure goes to the native front with the view (copied here, on the loop).
            self.snapshot = await loop.run_in_executor(self._db, self._build, frozenset(self.admission.pressed))
            self.admission.low_headroom = self.snapshot.low_headroom
            self.admission.set_slots(self.snapshot.engine_slots)

    async def refresh_if_stale(self) -> None:
        """Called when a request names a key or model the snapshot lacks: make sure
        the answer comes from a snapshot read after the request arrived."""
        await self.refresh(unless_newer_than=time.monotonic())

    async def refresh_forever(self) -> None:
        await _every(settings.GATEWAY_REFRESH_S, self.refresh, "gateway snapshot refresh failed; keeping the previous one")

    # --- request checks ------------------------------------------------------------------
    async def authenticate(self, context: grpc.aio.ServicerContext) -> KeyEntry:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer":
                    token = ""
                break
        if not token:
            raise Refusal.of("no_key")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        entry = self.snapshot.keys.get(digest)
        if entry is None:
            await self.refresh_if_stale()
            entry = self.snapshot.keys.get(digest)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= time.time()):
            raise Refusal.of("bad_key")
        return entry

    async def routes_for(self, key: KeyEntry, model: str, version: str, deadline: float | None = None) -> tuple[Route, ...]:
        if not model:
            raise Refusal.of("no_model_name")
        if model not in self.snapshot.grants.get(key.tenant_id, ()):
            await self.refresh_if_stale()
            if model not in self.snapshot.grants.get(key.tenant_id, ()):
                raise Refusal.of("not_granted", model=model)
        if key.models is not None and model not in key.models:
            raise Refusal.of("not_granted", model=model)
        routes = self.snapshot.routes.get(model, ())
        if not routes:
            await self.refresh_if_stale()
            routes = self.snapshot.routes.get(model, ())
        if not routes and model in self.snapshot.parked:
            routes = await self.wake(model, deadline)
        if version:
            routes = tuple(r for r in routes if r.version == version)
            if not routes and self.snapshot.routes.get(model):
                raise Refusal.of("no_such_version", model=model, version=version)
        if not routes:
            raise Refusal.of("no_replica", model=model)
        routes = self.for_tenant(key, routes)
        if not routes:
            raise Refusal.of("no_replica_for_key", model=model)
        permitted = self.permitted_for(key, routes)
        if not permitted:
            reason = self.snapshot.denials.get((key.tenant_id, routes[0].node), "")
            self.record_denial(key, model, routes[0].node, reason)
            raise Refusal.of("residency", model=model, reason=reason)
        return permitted

    @staticmethod
    def for_tenant(key: KeyEntry, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        return for_tenant(key, routes)

    def permitted_for(self, key: KeyEntry, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        return permitted_for(self.snapshot, key, routes)

    def embedder_routes(self, key: KeyEntry) -> tuple[Route, ...]:
        """Where this tenant's text may be embedded for the semantic cache: the embedder's
        replicas under the same slice and residency rules as the tenant's own models."""
        return self.permitted_for(key, self.for_tenant(key, self.snapshot.routes.get(settings.SEMANTIC_EMBEDDER, ())))

    async def wake(self, model: str, deadline: float | None) -> tuple[Route, ...]:
        """A model scaled to zero: ask the control plane to load it again (at most once a
        second per model and process) and hold the request until a replica is live or
        its deadline is near."""
        now = time.monotonic()
        if now - self._woken.get(model, -1e9) > 1.0:
            self._woken[model] = now

            def ask() -> None:
                from appliance.rollouts.services import model_wake

                close_old_connections()
                with audit_context(origin=Origin.GRPC, actor="gateway"):
                    model_wake(model_name=model)

            await asyncio.get_running_loop().run_in_executor(self._db, ask)
        limit = (deadline if deadline is not None else now + settings.GATEWAY_DEFAULT_TIMEOUT_S) - 0.05
        while time.monotonic() < limit:
            await self.refresh(unless_newer_than=time.monotonic())
            routes = self.snapshot.routes.get(model, ())
            if routes:
                return routes
            await asyncio.sleep(min(settings.GATEWAY_WAKE_POLL_S, max(0.0, limit - time.monotonic())))
        raise Refusal.of("waking", model=model)

    def choose_version(self, model: str, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        """During a rollout: the routes of one version, drawn by the rollout's traffic split."""
        versions = sorted({r.version for r in routes})
        if len(versions) == 1:
            return routes
        split = self.snapshot.weights.get(model, {})
        weights = [split.get(v, 0) for v in versions]
        chosen = random.choices(versions, weights)[0] if sum(weights) > 0 else random.choice(versions)
        return tuple(r for r in routes if r.version == chosen)

    def record_denial(self, key: KeyEntry, model: str, node: str, reason: str) -> None:
        """Audits a routing denial, at most once per tenant and model every 10 s."""
        now = time.monotonic()
        if now - self._denied.get((key.tenant_id, model), -1e9) < 10.0:
            return
        self._denied[(key.tenant_id, model)] = now

        def write() -> None:
            from appliance.policies.engine import Decision
            from appliance.policies.services import policy_denial_record

            close_old_connections()
            with audit_context(origin=Origin.GRPC, actor=f"tenant:{key.tenant_slug}"):
                policy_denial_record(
                    decision=Decision(False, "", (reason,)), operation="process", tenant=key.tenant_slug,
                    place=node, subject=f"request for model '{model}'",
                )  # fmt: skip

        self._db.submit(write)

    def pick(self, model: str, routes: tuple[Route, ...], exclude: str | None = None) -> Route | None:
        """The less loaded of two random replicas, without taking a slot."""
        return self.admission.least_loaded(model, [r for r in routes if r.address != exclude])

    # --- upstream -------------------------------------------------------------------------
    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    def unary(self, address: str, method: str) -> Any:
        key = (address, method)
        call = self._unary.get(key)
        if call is None:
            call = self.channel(address).unary_unary(f"/{SERVICE}/{method}")
            self._unary[key] = call
        return call

    async def admit(self, key: KeyEntry, model: str) -> None:
        """The tenant's rate limit and daily quota (shared by every gateway process)."""
        verdict = await self.quotas.take(key.tenant_id, rate=key.rate, burst=key.burst, daily=key.daily)
        if verdict.allowed:
            return
        self.tally.inc(metrics.SHED, model, key.priority, verdict.reason)
        status, text = refusal(verdict, tenant=key.tenant_slug, rate=key.rate, daily=key.daily)
        raise Refusal(grpc.StatusCode[status], text, verdict.retry_after_ms)

    async def flush_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.flush_metrics()

    def flush_metrics(self) -> None:
        # Summed per Triton address across its models (the gauge's label is the replica's address).
        inflight: dict[str, int] = {}
        limits: dict[str, float] = {}
        for (address, _), limiter in self.admission.limiters.items():
            inflight[address] = inflight.get(address, 0) + limiter.inflight
            limits[address] = limits.get(address, 0.0) + limiter.limit
        self.tally.flush(inflight, limits)

    async def close(self) -> None:
        self.flush_metrics()
        await self.quotas.close()
        await self.tokens.close()
        await self.engines.close()
        await self.cache.close()
        await self.semantic.close()
        await self.stats.close()
        for channel in self._channels.values():
            await channel.close()
        self._db.shutdown(wait=False)


def _parse(message_type: Any, raw: bytes, what: str) -> Any:
    try:
        return message_type.FromString(raw)
    except Exception as exc:  # protobuf raises DecodeError
        raise Refusal.of("not_a_message", what=what) from exc


async def _every(seconds: float, action: Any, failed: str) -> None:
    """`action` now and every `seconds` after; a failed round is logged, the next one runs."""
    while True:
        try:
            await action()
        except Exception:
            log.exception(failed)
        await asyncio.sleep(seconds)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the monotonic clock, if it sent one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _before_deadline(context: Any) -> bool:
    """Is there time left before the call's deadline (or none was set)?"""
    remaining = context.time_remaining()
    return remaining is None or remaining > 0


def _timeout(context: grpc.aio.ServicerContext) -> float:
    """The client's remaining deadline, or the gateway's default: a wedged replica
    must not hold a request (and a gateway slot) forever."""
    remaining = context.time_remaining()
    if remaining is None:
        return float(settings.GATEWAY_DEFAULT_TIMEOUT_S)
    if remaining <= 0:
        raise Refusal.of("expired_before_send")
    return remaining


class Handlers:
    """gRPC method implementations; each returns raw bytes."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.gw.snapshot.built_at > 0)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="appliance-gateway", version="1", extensions=["model_configuration"])

    async def _forward(
        self, method: str, raw: bytes, model: str, version: str, context: Any, request: Any = None,
        key: KeyEntry | None = None,
    ) -> bytes:
        key = key or await self.gw.authenticate(context)
        routes = await self.gw.routes_for(key, model, version, _deadline(context))
        if method == "ModelInfer":
            await self.gw.admit(key, model)
        snapshot = self.gw.snapshot
        if request is not None and model in snapshot.cached_models and key.tenant_id in snapshot.cache_tenants:
            return await self._cached(raw, model, version, routes, key, request, context)
        if request is not None and model in snapshot.semantic and key.tenant_id in snapshot.cache_tenants:
            return await self._semantic(raw, model, version, routes, key, request, context)
        try:
            response, _ = await self._send(method, raw, model, version, routes, context, key)
        except Refusal as refusal:
            if refusal.code != grpc.StatusCode.UNAVAILABLE:
                raise
            # Every replica it knew was unavailable: perhaps the snapshot is behind (a replica
            # parked or moved a moment ago). Once more with a fresh one, within the deadline.
            await self.gw.refresh_if_stale()
            routes = await self.gw.routes_for(key, model, version, _deadline(context))
            response, _ = await self._send(method, raw, model, version, routes, context, key)
        return response

    async def _send(
        self, method: str, raw: bytes, model: str, version: str, routes: tuple[Route, ...], context: Any,
        key: KeyEntry | None = None,
    ) -> tuple[bytes, Route]:
        """Admitted to a replica slot (admission.py: adaptive limits, priority queue,
        shedding), then sent once; retried once only if that replica was not there to
        answer (another replica, or the same one after a pause: a Triton reload swaps a
        version's instances), never after a model error. Unpinned inference follows
        the rollout's traffic split; a retry may go to any version's replica. A replica is
        "not there" when its Triton is down (UNAVAILABLE) or up without the model
        (NOT_FOUND: restarted and still reloading its models); the gateway only sends to
        versions the control plane has live there, so neither is the client's doing."""
        infer = method == "ModelInfer"
        rank = RANK.get(key.priority, contract.DEFAULT_RANK) if key is not None else 0
        first = self.gw.choose_version(model, routes) if infer and not version else routes
        tenant = key.tenant_slug if key is not None else "-"
        route = await self._admit(model, first, rank, context, tenant)
        for attempt in range(contract.ATTEMPTS):
            current = route
            started = time.perf_counter()
            latency: float | None = None
            overloaded = False
            try:
                body = raw if version else with_version(raw, current.version)
                if infer and key is not None and self.gw.snapshot.priority_levels.get(model, 0) >= 3:
                    body = with_priority(body, PRIORITY_LEVEL.get(key.priority, 2))
                response = await self.gw.unary(current.address, method)(body, timeout=_timeout(context))
                latency = time.perf_counter() - started
                if infer:
                    self.gw.stats.record(model, current.version, True, latency)
                return response, current
            except grpc.aio.AioRpcError as exc:
                if exc.code() in REPLICA_MISSING and attempt + 1 < contract.ATTEMPTS:
                    self.gw.tally.inc(metrics.RETRIED, model)
                    self.gw.admission.eject(model, current.address, settings.GATEWAY_EJECT_S)
                    retry = self._retry_target(model, current, routes)
                    if retry is current:
                        await asyncio.sleep(settings.GATEWAY_RETRY_PAUSE_S)
                    # Elsewhere if there is an elsewhere: wait for a slot there rather than go back.
                    others = tuple(r for r in routes if r.address != current.address) or routes
                    route = self.gw.admission.try_acquire(model, (retry,), rank) or await self._admit(model, others, rank, context, tenant)
                    continue
                overloaded = exc.code() in OVERLOADED
                latency = time.perf_counter() - started
                if infer:
                    self.gw.stats.record(model, current.version, False, latency)
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # the model exists: it is not loaded there yet
                    raise Refusal.of("not_loaded", model=model) from exc
                raise Refusal(exc.code(), exc.details() or contract.refusal("upstream_error")[1]) from exc
            finally:
                self.gw.admission.release(model, current, latency, overloaded=overloaded)
        raise Refusal.of("unreachable")

    async def _reserve(self, budget: Budget, key: KeyEntry, model: str, request: pb.ModelInferRequest,
                       raw: bytes) -> bytes:  # fmt: skip
        """One request's max_tokens against the tenant's limits; the request as it goes upstream,
        asking for token counts (unused tokens come back; the metrics count them)."""
        if not (key.tokens_per_minute or key.max_tokens):
            return asking_for_counts(request)
        try:
            asked = max_tokens_of(request, self.gw.snapshot.engine_context.get(model, contract.DEFAULT_MAX_TOKENS))
            await self.gw.tokens.reserve(budget, tenant=key.tenant_slug, tpm=key.tokens_per_minute, cap=key.max_tokens,
                                         asked=asked)  # fmt: skip
        except TokenRefusal as refused:
            self.gw.tally.inc(metrics.SHED, model, key.priority, "tokens")
            raise Refusal.of(refused.name, refused.retry_after_ms, **refused.fields) from None
        return asking_for_counts(request)

    async def _admit(self, model: str, routes: tuple[Route, ...], rank: int, context: Any, tenant: str = "-") -> Route:
        try:
            route, waited = await self.gw.admission.acquire(model, routes, rank, _deadline(context))
        except Shed as shed:
            self.gw.tally.inc(metrics.SHED, model, CLASSES[rank], "overload")
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(shed), shed.retry_after_ms) from None
        except Expired as expired:
            raise Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, str(expired)) from None
        self.gw.tally.observe(metrics.QUEUE_TIME, model, value=waited)
        self.gw.stats.queued(tenant, model, waited)
        return route

    def _retry_target(self, model: str, failed: Route, routes: tuple[Route, ...]) -> Route:
        """Another replica if there is one, else the same version elsewhere on the same
        Triton, else the same replica again (after a pause: a Triton reload swaps a
        version's instances, and one request can fall between them)."""
        other = self.gw.pick(model, routes, exclude=failed.address)
        if other is not None:
            return other
        return next((r for r in routes if r != failed and r.address == failed.address), failed)

    async def _cached(
        self, raw: bytes, model: str, version: str, routes: tuple[Route, ...], key: Any, request: Any, context: Any
    ) -> bytes:
        # The answer depends on the version: look up under the version that would answer.
        served_version = version or self.gw.pick(model, self.gw.choose_version(model, routes)).version  # type: ignore[union-attr]
        cache_key = self.gw.cache.key(key.tenant_id, model, served_version, raw)
        hit = await self.gw.cache.get(cache_key, request.id)
        self.gw.tally.inc(metrics.CACHE, model, "miss" if hit is None else "hit")
        self.gw.stats.cache(key.tenant_slug, model, hit is not None)
        if hit is not None:
            return hit
        pinned = version or served_version
        same_version = tuple(r for r in routes if r.version == pinned) or routes
        response, _ = await self._send("ModelInfer", raw, model, version, same_version, context, key)
        await self.gw.cache.put(cache_key, response)
        return response

    async def _semantic(
        self, raw: bytes, model: str, version: str, routes: tuple[Route, ...], key: Any, request: Any, context: Any
    ) -> bytes:
        """The semantic cache (gateway/semantic.py): embed the text on our own embedder,
        look for a close, compatible question already answered by this version for this
        tenant; otherwise ask the model and remember its answer. Anything that keeps the
        cache from deciding (no single text input, no embedder replica, Redis down) is
        a pass-through, never a failure."""
        conf = self.gw.snapshot.semantic[model]
        text = request_text(request)
        embed_routes = self.gw.embedder_routes(key) if text is not None else ()
        vector = None
        if embed_routes:
            try:
                embedded, _ = await self._send("ModelInfer", embed_request(text or ""), settings.SEMANTIC_EMBEDDER, "",
                                               embed_routes, context, key)  # fmt: skip
                vector = embedding_of(embedded)
            except (Refusal, ValueError, IndexError) as exc:
                log.warning("semantic cache skipped for %s: the embedder failed (%s)", model, exc)
        if vector is None:
            self.gw.tally.inc(metrics.CACHE, model, "semantic_bypass")
            response, _ = await self._send("ModelInfer", raw, model, version, routes, context, key)
            return response
        served_version = version or self.gw.pick(model, self.gw.choose_version(model, routes)).version  # type: ignore[union-attr]
        scope = self.gw.semantic.scope(key.tenant_id, model, served_version)
        answer, _ = await self.gw.semantic.lookup(scope, vector, text or "", float(conf["threshold"]))
        self.gw.tally.inc(metrics.CACHE, model, "semantic_miss" if answer is None else "semantic_hit")
        self.gw.stats.cache(key.tenant_slug, model, answer is not None)
        if answer is not None:
            cached = pb.ModelInferResponse.FromString(answer)
            cached.id = request.id  # the answer is the cached one; the id is this request's
            return cached.SerializeToString()
        same_version = tuple(r for r in routes if r.version == served_version) or routes
        response, _ = await self._send("ModelInfer", raw, model, version, same_version, context, key)
        await self.gw.semantic.put(scope, vector, text or "", response, int(conf["ttl_s"]), int(conf["max_entries"]))
        return response

    async def model_infer(self, raw: bytes, context: Any) -> bytes:
        started = time.perf_counter()
        tenant = model = "-"
        status = "OK"
        try:
            request = _parse(pb.ModelInferRequest, raw, "ModelInferRequest")
            key = await self.gw.authenticate(context)
            tenant = key.tenant_slug
            if request.model_name in self.gw.snapshot.grants.get(key.tenant_id, ()):
                model = request.model_name  # a label only for names the tenant may call: bounded
            return await self._forward("ModelInfer", raw, request.model_name, request.model_version, context, request, key)
        except Refusal as refusal:
            status = refusal.code.name
            raise
        finally:
            tally, seconds = self.gw.tally, time.perf_counter() - started
            tally.inc(metrics.REQUESTS, tenant, model, status)
            tally.observe(metrics.LATENCY, model, value=seconds)
            self.gw.stats.answered(tenant, model, status == "OK", seconds)

    async def model_metadata(self, raw: bytes, context: Any) -> bytes:
        request = _parse(pb.ModelMetadataRequest, raw, "ModelMetadataRequest")
        return await self._forward("ModelMetadata", raw, request.name, request.version, context)

    async def model_config(self, raw: bytes, context: Any) -> bytes:
        request = _parse(pb.ModelConfigRequest, raw, "ModelConfigRequest")
        return await self._forward("ModelConfig", raw, request.name, request.version, context)

    async def model_ready(self, raw: bytes, context: Any) -> bytes:
        request = _parse(pb.ModelReadyRequest, raw, "ModelReadyRequest")
        try:
            return await self._forward("ModelReady", raw, request.name, request.version, context)
        except Refusal as refusal:
            if refusal.code == grpc.StatusCode.UNAVAILABLE:
                return pb.ModelReadyResponse(ready=False).SerializeToString()
            raise

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """One stream, one model, one replica: the first request picks them."""
        first_raw = await anext(requests, None)
        if first_raw is None:
            return  # the client closed the stream without a request: nothing to answer (as Triton does)
        arrived = time.perf_counter()  # what a client's time to first token counts from (queueing included)
        first = _parse(pb.ModelInferRequest, first_raw, "ModelInferRequest")
        model, version = first.model_name, first.model_version
        tenant = label = "-"  # a refused stream is counted as unary calls are (a label only for granted names)
        budget: Budget | None = None
        try:
            key = await self.gw.authenticate(context)
            tenant = key.tenant_slug
            label = model if model in self.gw.snapshot.grants.get(key.tenant_id, ()) else "-"
            routes = await self.gw.routes_for(key, model, version, _deadline(context))
            await self.gw.admit(key, model)
            # Generative models: every request asks for its token counts and reserves its max_tokens
            # against the tenant's limits (gateway/tokens.py).
            budget = Budget(key.tenant_id) if model in self.gw.snapshot.generative else None
            if budget is not None:
                first_raw = await self._reserve(budget, key, model, first, first_raw)
            # A stream holds one replica slot for its whole life.
            route = await self._admit(model, routes if version else self.gw.choose_version(model, routes),
                                      RANK.get(key.priority, contract.DEFAULT_RANK), context, key.tenant_slug)  # fmt: skip
        except BaseException as exc:
            if budget is not None:
                await self.gw.tokens.settle(budget)  # nothing was generated: all of it back
            if isinstance(exc, Refusal):
                self.gw.stats.answered(tenant, label, False, time.perf_counter() - arrived)
            raise
        chosen = version or route.version

        # A later request of the stream refused (upstream() below). grpc answers a request iterator
        # that raises by cancelling the call to Triton, so the response loop sees a cancellation,
        # and answers the client with this refusal instead.
        refused: list[Refusal] = []

        async def upstream() -> AsyncIterator[bytes]:
            yield first_raw if version else with_version(first_raw, chosen)
            try:
                async for raw in requests:
                    request = _parse(pb.ModelInferRequest, raw, "ModelInferRequest")
                    if request.model_name != model or (request.model_version and request.model_version != chosen):
                        raise Refusal.of("stream_one_version")
                    if budget is not None:
                        raw = await self._reserve(budget, key, model, request, raw)
                        arrivals.append(time.perf_counter())
                    yield raw if request.model_version else with_version(raw, chosen)
            except Refusal as refusal:
                refused.append(refusal)
                raise

        started, ok, first_response, responses, failed = time.perf_counter(), False, None, 0, 0
        left = False  # the client went away (cancelled, closed its HTTP connection) before its deadline, no answer failed
        # Token timing, per request of the stream in order: when each arrived, and its last token.
        arrivals: deque[float] = deque([arrived])
        last_token: float | None = None
        first_ttft: float | None = None  # the stream's first request's time to first token
        decode_tokens, decode_s = 0, 0.0  # tokens after each request's first, and their seconds (tokens/s gate)
        try:
            call = self.gw.channel(route.address).stream_stream(f"/{SERVICE}/ModelStreamInfer")(
                upstream(), timeout=_timeout(context)
            )
            async for response in call:
                if first_response is None:
                    first_response = time.perf_counter() - started
                responses += 1
                # A request of the stream that failed in Triton or the engine is answered in the
                # stream (the call itself ends OK): it is the version's error all the same.
                failed += stream_error(response)
                if budget is not None:
                    if tokens := budget.count(response):
                        now = time.perf_counter()
                        if last_token is None:
                            self.gw.tally.observe(metrics.TTFT, model, chosen, value=now - arrivals[0])
                            first_ttft = now - arrivals[0] if first_ttft is None else first_ttft
                        else:
                            self.gw.tally.observe(metrics.INTER_TOKEN, model, chosen, value=now - last_token)
                            decode_tokens, decode_s = decode_tokens + tokens, decode_s + (now - last_token)
                        last_token = now
                    if budget.ended:  # that request is done: the next one's clock starts at its arrival
                        last_token = None
                        if len(arrivals) > 1:
                            arrivals.popleft()
                yield response
            ok = not failed
        except (asyncio.CancelledError, GeneratorExit):
            # grpc's cancellation for a refused later request (above); else the client went away,
            # or the OpenAI API closed this stream (its client left, or an answer failed).
            if refused:
                raise refused[0] from None
            left = not failed and _before_deadline(context)
            raise
        except grpc.aio.AioRpcError as exc:
            if refused:
                raise refused[0] from None
            raise Refusal(exc.code(), exc.details() or contract.refusal("upstream_error")[1]) from exc
        finally:
            # A stream's length says nothing about the replica's load: no latency sample.
            self.gw.admission.release(model, route, None)
            if budget is not None:
                self.gw.tally.inc(metrics.OUTPUT_TOKENS, key.tenant_slug, model, chosen, amount=budget.counted)
                self.gw.tally.inc(metrics.INPUT_TOKENS, key.tenant_slug, model, chosen, amount=budget.prompt)
                await self.gw.tokens.settle(budget)
            seconds = time.perf_counter() - started
            # The version's statistics judge rollouts: a generative stream's latency there is its
            # time to first token (a long answer is not a slow one); other streams, their length.
            # A client refused, or one that left (a chat's stop button), is not the version's failure
            # (rollout gates read these); a deadline that passed is.
            if not refused and not left:
                self.gw.stats.record(model, chosen, ok, first_ttft if first_ttft is not None else seconds)
            if decode_tokens:
                self.gw.stats.decoded(model, chosen, decode_tokens, decode_s)
            if first_response is not None:  # a stream that never answered has no time to first response
                self.gw.stats.streamed(key.tenant_slug, model, first_response, responses, seconds,
                                       output_tokens=budget.counted if budget is not None else 0,
                                       decode_tokens=decode_tokens, decode_seconds=decode_s)  # fmt: skip
            self.gw.stats.answered(key.tenant_slug, model, ok or left, seconds)


def _guard(handler: Any) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.message, trailing_metadata=refusal.trailers)

    return unary


def _guard_stream(handler: Any) -> Any:
    async def stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in handler(requests, context):
                yield item
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.message, trailing_metadata=refusal.trailers)

    return stream


def generic_handler(handlers: Handlers) -> grpc.GenericRpcHandler:
    typed = grpc.unary_unary_rpc_method_handler
    raw = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": typed(
                _guard(handlers.server_live),
                request_deserializer=pb.ServerLiveRequest.FromString,
                response_serializer=pb.ServerLiveResponse.SerializeToString,
            ),
            "ServerReady": typed(
                _guard(handlers.server_ready),
                request_deserializer=pb.ServerReadyRequest.FromString,
                response_serializer=pb.ServerReadyResponse.SerializeToString,
            ),
            "ServerMetadata": typed(
                _guard(handlers.server_metadata),
                request_deserializer=pb.ServerMetadataRequest.FromString,
                response_serializer=pb.ServerMetadataResponse.SerializeToString,
            ),
            "ModelReady": raw(_guard(handlers.model_ready)),
            "ModelMetadata": raw(_guard(handlers.model_metadata)),
            "ModelConfig": raw(_guard(handlers.model_config)),
            "ModelInfer": raw(_guard(handlers.model_infer)),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(_guard_stream(handlers.model_stream_infer)),
        },
    )


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the gateway's TLS; a client CA turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


async def serve(
    bind: str, *, reuse_port: bool = False, tls: TlsFiles | None = None, metrics_bind: str = "",
    export_path: Path | None = None, on_started: Any = None, openai_bind: str = "",
) -> None:
    gateway = Gateway(export_path)
    await gateway.refresh()
    server = grpc.aio.server(
        options=[*_CHANNEL_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port else 0)],
    )
    handlers = Handlers(gateway)
    server.add_generic_rpc_handlers([generic_handler(handlers)])
    port = server.add_secure_port(bind, tls.credentials()) if tls else server.add_insecure_port(bind)
    if port == 0:
        raise RuntimeError(f"gateway cannot bind {bind}")
    await server.start()
    http = None
    if openai_bind:
        from appliance.gateway import openai_api

        http = await openai_api.start(gateway, handlers, openai_bind, reuse_port=reuse_port)
    if on_started is not None:
        on_started()
    if metrics_bind:
        metrics.serve_metrics(metrics_bind)
        log.info("gateway metrics at http://%s/metrics", metrics_bind)
    log.info("gateway listening on %s (%s)", bind, "mutual TLS" if tls and tls.client_ca else "TLS" if tls else "plaintext")
    refresher = asyncio.create_task(gateway.refresh_forever())
    flusher = asyncio.create_task(gateway.stats.flush_forever())
    metrics_flusher = asyncio.create_task(gateway.flush_metrics_forever())
    engine_watch = asyncio.create_task(_every(contract.ENGINE_POLL_S, gateway.engines.poll,
                                              "reading the engines' gauges failed"))  # fmt: skip
    try:
        await server.wait_for_termination()
    finally:
        refresher.cancel()
        flusher.cancel()
        metrics_flusher.cancel()
        engine_watch.cancel()
        if http is not None:
            await http.cleanup()
        await server.stop(grace=5)
        await gateway.close()
