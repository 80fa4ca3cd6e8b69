"""The Python plane's answers to the parity scripts (native/replay.cc answers them for
the native front): the same operations, run by the gateway's own Python modules.

Randomness is fixed as in the native driver (the first two candidates are "the two
random ones") and time is the script's. Each answer is the JSON object replay.cc
writes for the same operation."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from appliance.gateway import contract
from appliance.gateway.admission import Admission, Shed, Waiter
from appliance.gateway.cache import cache_key
from appliance.gateway.quota import Verdict, refusal
from appliance.gateway.snapshot import KeyEntry, Route, Snapshot, for_tenant, permitted_for
from appliance.gateway.stats import Recorder
from appliance.gateway.tokens import Budget, TokenRefusal, asking_for_counts, max_tokens_of, within_caps
from appliance.gateway.wire import stream_error

REPLAY = Path(__file__).resolve().parents[1] / "var" / "build" / "gatewayd-replay"


def native(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The native front's answers (var/build/gatewayd-replay, built by `make native`)."""
    assert REPLAY.exists(), f"{REPLAY} is missing: run `make native`"
    script = "".join(json.dumps(op) + "\n" for op in ops)
    done = subprocess.run([str(REPLAY)], input=script, capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def _route(r: dict[str, Any]) -> Route:
    return Route(node=r["node"], address=r["address"], version=r.get("version", "1"), tenant=r.get("tenant") or None)


def _routes(rs: list[dict[str, Any]]) -> tuple[Route, ...]:
    return tuple(_route(r) for r in rs)


class Twin:
    """Runs parity operations through the Python plane's modules."""

    def __init__(self) -> None:
        self.now = 0.0
        self.admission = Admission(queue_max=256, queue_wait_s=2.0, clock=lambda: self.now, pick=lambda n: (0, 1))
        self.waiters: dict[str, tuple[str, Waiter]] = {}
        self.recorder: Recorder | None = None
        self._granted: list[list[str]] = []
        self._evicted: list[Any] = []

    def run(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.answer(op) for op in ops]

    def answer(self, op: dict[str, Any]) -> dict[str, Any]:
        self._granted, self._evicted = [], []
        out: dict[str, Any] = getattr(self, f"op_{op['op']}")(op) or {}
        if self._granted:
            out["granted"] = self._granted
        if self._evicted:
            out["evicted"] = self._evicted
        out["limiters"] = {
            f"{address}|{model}": [lim.limit, lim.inflight, lim.baseline, lim.latency, lim.down_until]
            for (address, model), lim in sorted(self.admission.limiters.items())
        }
        return out

    # --- admission ---------------------------------------------------------------------------
    def op_configure(self, op: dict[str, Any]) -> None:
        self.admission.configure(queue_max=op["queue_max"], initial_limit=op["initial_limit"], max_limit=op["max_limit"])

    def op_clock(self, op: dict[str, Any]) -> None:
        self.now = op["now"]

    def op_take(self, op: dict[str, Any]) -> dict[str, Any]:
        route = self.admission.take(op["model"], _routes(op["routes"]), op["rank"], op.get("exclude") or None)
        return {"route": route.address if route is not None else None}

    def op_join(self, op: dict[str, Any]) -> dict[str, Any]:
        name, model, routes, rank = op["id"], op["model"], _routes(op["routes"]), op["rank"]
        hint = self.admission.hint(model, routes)

        def granted(route: Route) -> bool:
            self._granted.append([name, route.address])
            return True

        def evicted(retry_after_ms: int, who: str = name) -> None:
            self._evicted = [who, retry_after_ms]

        try:
            waiter = self.admission.join(model, routes, rank, granted=granted, evicted=evicted)
        except Shed as shed:
            return {"joined": "shed", "hint": shed.retry_after_ms, "refusal": ["RESOURCE_EXHAUSTED", str(shed)]}
        self.waiters[name] = (model, waiter)
        return {"joined": "queued", "hint": hint}

    def op_leave(self, op: dict[str, Any]) -> dict[str, Any]:
        model, waiter = self.waiters[op["id"]]
        return {"left": self.admission.leave(model, waiter)}

    def op_release(self, op: dict[str, Any]) -> None:
        self.admission.low_headroom = frozenset(op.get("low_headroom", ()))
        self.admission.release(op["model"], _route(op["route"]), op["seconds"], overloaded=op.get("overloaded", False))

    def op_eject(self, op: dict[str, Any]) -> None:
        self.admission.eject(op["model"], op["address"], op["seconds"])

    def op_hint(self, op: dict[str, Any]) -> dict[str, Any]:
        return {"hint": self.admission.hint(op["model"], _routes(op["routes"]))}

    # --- refusals, cache keys ------------------------------------------------------------------
    def op_refusal(self, op: dict[str, Any]) -> dict[str, Any]:
        status, text = contract.refusal(op["name"], **op["fields"])
        return {"status": status, "text": text}

    def op_quota_refusal(self, op: dict[str, Any]) -> dict[str, Any]:
        verdict = Verdict(False, op["retry_ms"], contract.QUOTA_REASONS[op["reason"]])
        status, text = refusal(verdict, tenant=op["tenant"], rate=op["rate"], daily=op["daily"])
        return {"status": status, "text": text}

    def op_cache_key(self, op: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"key": cache_key(op["instance"], op["tenant"], op["model"], op["version"], bytes.fromhex(op["raw"]))}
        except ValueError:
            return {"key": None}

    # --- generative streams' tokens (tokens.py) ------------------------------------------------------
    def op_tokens_asked(self, op: dict[str, Any]) -> dict[str, Any]:
        request = pb.ModelInferRequest.FromString(bytes.fromhex(op["raw"]))
        try:
            return {"asked": max_tokens_of(request, op["context"])}
        except TokenRefusal as refused:
            return {"why": refused.fields["why"]}

    def op_within_caps(self, op: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"store": within_caps(tenant=op["tenant"], tpm=op["tpm"], cap=op["cap"], asked=op["asked"])}
        except TokenRefusal as refused:
            status, text = contract.refusal(refused.name, **refused.fields)
            return {"status": status, "text": text}

    def op_ask_for_counts(self, op: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "raw": asking_for_counts(pb.ModelInferRequest.FromString(bytes.fromhex(op["raw"]))).hex()}

    def op_budget(self, op: dict[str, Any]) -> dict[str, Any]:
        budget = Budget("t", reserved=op["reserved"], minutes={int(m): n for m, n in op["minutes"].items()})
        responses = [bytes.fromhex(r) for r in op["responses"]]
        counted = [budget.count(raw) for raw in responses]
        return {"counted": counted, "errors": [stream_error(raw) for raw in responses], "total": budget.counted,
                "prompt": budget.prompt, "uncounted": budget.uncounted, "ended": budget.ended,
                "unused": [list(pair) for pair in budget.unused()]}  # fmt: skip

    # --- statistics ------------------------------------------------------------------------------
    def _stats(self) -> Recorder:
        if self.recorder is None:
            self.recorder = Recorder()
        return self.recorder

    def op_answered(self, op: dict[str, Any]) -> None:
        self._stats().answered(op["tenant"], op["model"], op["status"] == "OK", op["seconds"])

    def op_version(self, op: dict[str, Any]) -> None:
        self._stats().record(op["model"], op["version"], op["ok"], op["seconds"])

    def op_queued(self, op: dict[str, Any]) -> None:
        self._stats().queued(op["tenant"], op["model"], op["seconds"])

    def op_cache(self, op: dict[str, Any]) -> None:
        self._stats().cache(op["tenant"], op["model"], op["hit"])

    def op_stream_answered(self, op: dict[str, Any]) -> None:
        self._stats().answered(op["tenant"], op["model"], op["ok"], op["seconds"])

    def op_stream_ended(self, op: dict[str, Any]) -> None:
        """What server.py model_stream_infer counts when a stream ends (beside answered)."""
        if op["decode_tokens"]:
            self._stats().decoded(op["model"], op["version"], op["decode_tokens"], op["decode_s"])
        if op["first_response_s"] is not None:
            self._stats().streamed(op["tenant"], op["model"], op["first_response_s"], op["responses"], op["seconds"],
                                   output_tokens=op["output_tokens"], decode_tokens=op["decode_tokens"],
                                   decode_seconds=op["decode_s"])  # fmt: skip

    def op_flush(self, op: dict[str, Any]) -> dict[str, Any]:
        recorder = self._stats()
        recorder.instance = op["instance"]

        async def flush() -> None:
            await recorder.flush(at=op["now"])
            await recorder.close()

        asyncio.run(flush())
        self.recorder = None
        return {"flushed": True}


def permitted(snapshot: Snapshot, key: KeyEntry, model: str, version: str) -> list[str]:
    """What the Python plane's routes_for keeps, in the order the native driver writes it."""
    routes = snapshot.routes.get(model, ())
    if version:
        routes = tuple(r for r in routes if r.version == version)
    return [r.address for r in permitted_for(snapshot, key, for_tenant(key, routes))]
